"""Static models: slimembed (Rust) against model2vec and sentence-transformers StaticEmbedding on
the same table and texts, against raw tokenization, and across text lengths.

    python -m benchmarks.static_speed --model2vec-dir M2V_DIR --st-dir ST_DIR --slim-dir SLIM_DIR

M2V_DIR and ST_DIR hold the same table in model2vec and sentence-transformers form; SLIM_DIR is
``slimembed export`` of one of them. "tokenize only" is the Rust tokenizers crate encoding the
same texts without special tokens, through the Python tokenizers binding (encode_batch_fast, no
offsets) and through slimembed's own binding with its piece cache off: the floor any engine
that tokenizes every text whole sits on.

Every engine is timed on the same half of the texts (every other one, 10,442 texts).
slimembed's tokenizer keeps each piece's ids (rust/src/pieces.rs), so three slimembed rows:
"warm cache" embeds the timed texts again and again, as a process serving repeated texts does;
"cache warmed on other texts" is a model loaded afresh that has embedded only the *other* half
before being timed, a process that has served some traffic and now meets new texts; "cold
cache" is a model loaded afresh, timed on its first texts ever. Fresh models are loaded and
warmed before the clock starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from benchmarks.datasets import all_texts
from benchmarks.timing import interleaved, machine, ratio, summary


def _texts_of_length(tokenizer, tokens: int, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    """``count`` texts of about ``tokens`` tokens each, cut from SciFact abstracts."""
    words = " ".join(all_texts()[-6000:]).split()
    out, start = [], 0
    for _ in range(count):
        n = tokens  # words are about one token or more each; trim by token count below
        chunk = words[start : start + n]
        start = (start + n) % (len(words) - n)
        ids = tokenizer.encode(" ".join(chunk), add_special_tokens=False).ids[:tokens]
        out.append(tokenizer.decode(ids))
    return out


@click.command()
@click.option("--model2vec-dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--st-dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--slim-dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--reps", type=int, default=3, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
def main(model2vec_dir: str, st_dir: str, slim_dir: str, reps: int, json_out: str | None) -> None:
    """Texts/s of each engine on every text in shared/data, and slimembed's length scaling."""
    import model2vec
    import sentence_transformers
    import tokenizers
    import torch
    from model2vec import StaticModel
    from sentence_transformers import SentenceTransformer

    import slimembed
    from slimembed import TextEmbedding, _core

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    every = list(all_texts())
    texts, others = every[1::2], every[0::2]
    ours = TextEmbedding(slim_dir)

    def fresh(warm_on: list[str] | None) -> Callable[[], np.ndarray]:
        """Each call embeds ``texts`` with a model of its own, loaded (and warmed on
        ``warm_on``) ahead of time."""
        models = []
        for _ in range(reps + 1):
            model = TextEmbedding(slim_dir)
            if warm_on:
                model.encode(warm_on)
            models.append(model)
        return lambda: models.pop().encode(texts)

    m2v = StaticModel.from_pretrained(model2vec_dir)
    st = SentenceTransformer(st_dir, device="cpu")
    py_tok = tokenizers.Tokenizer.from_file(str(Path(slim_dir) / "tokenizer.json"))
    py_tok.no_truncation()
    rust_tok = _core.Tokenizer(Path(slim_dir) / "tokenizer.json", piece_cache=False)
    engines = {
        "slimembed": lambda: ours.encode(texts),
        "slimembed, cache warmed on other texts": fresh(others),
        "slimembed, cold cache": fresh(None),
        "model2vec": lambda: m2v.encode(texts, max_length=None),
        "sentence-transformers": lambda: st.encode(texts, batch_size=256),
        "tokenize only (tokenizers)": lambda: py_tok.encode_batch_fast(
            texts, add_special_tokens=False
        ),
        "tokenize only (slimembed binding, no cache)": lambda: rust_tok.encode(
            texts, add_special_tokens=False
        ),
    }
    times = interleaved(engines, reps)
    rates = {name: summary(t, len(texts)) for name, t in times.items()}
    ours_names = [name for name in engines if name.startswith("slimembed")]
    speedups = {
        ours_name: {
            name: ratio(times[ours_name], times[name]) for name in engines if name not in ours_names
        }
        for ours_name in ours_names
    }

    scaling = {}
    for tokens in (16, 64, 256, 1024, 4096):
        batch = _texts_of_length(py_tok, tokens, max(64, 65536 // tokens))
        t = interleaved({"slimembed": lambda b=batch: ours.encode(b)}, reps)["slimembed"]
        scaling[tokens] = summary(t, len(batch))["median"]

    report = {
        "machine": machine(),
        "threads": threads,
        "piece_rule": _core.Tokenizer(Path(slim_dir) / "tokenizer.json").piece_rule,
        "versions": {
            "slimembed": slimembed.__version__,
            "model2vec": model2vec.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "texts": len(texts),
        "tokens": int(sum(len(e.ids) for e in py_tok.encode_batch_fast(texts, False))),
        "texts_per_s": rates,
        "speedups": speedups,
        "scaling_texts_per_s": scaling,
    }
    click.echo(
        f"{len(texts)} texts (every other one of shared/data; {report['tokens']} tokens), "
        f"{threads} threads, piece rule {report['piece_rule']}"
    )
    for name, r in rates.items():
        click.echo(f"  {name:44} {r['median']:10.0f} texts/s")
    for ours_name, over in speedups.items():
        click.echo(f"  {ours_name} is faster than:")
        for name, s in over.items():
            click.echo(f"    {name:42} {s['median']:6.2f}x ({s['min']:.2f}-{s['max']:.2f})")
    click.echo("  slimembed by text length (tokens -> texts/s, tokens/s):")
    for tokens, rate in scaling.items():
        click.echo(f"    {tokens:5d} -> {rate:9.0f} texts/s  {rate * tokens:11.0f} tokens/s")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
