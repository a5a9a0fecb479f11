"""Reranking pairs/s: slimembed's TextCrossEncoder against SGPT's PyTorch code, same model.

    python -m benchmarks.rerank_speed --workdir /tmp/rerank-bench

The model is a random-weight causal LM with GPT-2-small's shape (12 layers, 768 wide, 50,257
vocabulary, 1,024 positions) and a byte-level BPE trained on STS-B sentences: random weights
cost exactly what real ones do for a given shape. Pairs: SciFact queries, each against
documents of the corpus (long abstracts, so the document truncation is exercised at
--max-length). Both engines score the same pairs in batches of the same size on the same
threads, interleaved (A B A B ...); each engine's peak resident memory is measured in a fresh
process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks.datasets import scifact, sts
from benchmarks.probe import peak_rss_mib
from benchmarks.timing import interleaved, machine, ratio, summary

# The prompt as crossencoder/beir/sgptce.py writes it ("{}" for the document), copied from there
# rather than from the export's default so that the reference stays independent of it.
SGPT_PROMPT = (
    "Documents are searched to find matches with the same content.\n"
    'The document "{}" is a good search result for "'
)


def sgpt_scores(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    batch_size: int,
    max_length: int,
    dtype: Any = None,
) -> np.ndarray:
    """SGPT's cross-encoder as crossencoder/beir/sgptce.py runs it (GPTRanker.predict ->
    encode -> _loglikelihood_tokens, prompt "G"): contexts and queries tokenized apart, the
    document cut from its left, batches right-padded with zeros and no attention mask, the full
    (batch, seq, vocab) log-softmax, the query tokens' log-probabilities summed."""
    import torch

    instruction_len = len(tokenizer.tokenize(SGPT_PROMPT[: SGPT_PROMPT.index("{")]))
    requests = [
        (
            tokenizer.encode(SGPT_PROMPT.format(doc), add_special_tokens=False),
            tokenizer.encode(query, add_special_tokens=False),
        )
        for query, doc in pairs
    ]
    scores = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        inps = []
        for context_enc, continuation_enc in chunk:
            tail = (context_enc[instruction_len:] + continuation_enc)[
                -(max_length + 1 - instruction_len) :
            ]
            inps.append((context_enc[:instruction_len] + tail)[:-1])
        width = max(len(inp) for inp in inps)
        batch = torch.tensor([inp + [0] * (width - len(inp)) for inp in inps])
        with torch.no_grad():
            logits = model(batch)[0].to(dtype or torch.float32)
            multi_logits = torch.log_softmax(logits, dim=-1)
        for logprobs, inp, (_, cont) in zip(multi_logits, inps, chunk, strict=True):
            picked = logprobs[len(inp) - len(cont) : len(inp)].gather(
                1, torch.tensor(cont)[:, None]
            )
            scores.append(float(picked.sum()))
    return np.array(scores)


def build_model(out: Path) -> Path:
    """A random GPT-2-small-shaped LM with a BPE tokenizer trained on STS-B, saved to ``out``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if (out / "config.json").is_file():
        return out
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = []
    for name in ("en-dev", "en-test"):
        pairs = sts(name)
        texts += pairs.sentences1 + pairs.sentences2
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(out)
    return out


def bench_pairs(n: int, docs_per_query: int = 10) -> list[tuple[str, str]]:
    data = scifact()
    pairs = []
    for q, query in enumerate(data.queries):
        for k in range(docs_per_query):
            pairs.append((query, data.docs[(q * docs_per_query + k) % len(data.docs)]))
    return pairs[:n]


def _engines(
    source: Path, exported: Path, threads: int, batch_size: int, max_length: int
) -> dict[str, Any]:
    import torch
    import transformers

    from slimembed import TextCrossEncoder

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    reranker = TextCrossEncoder(exported, threads=threads)

    def slim(pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.array(list(reranker.rerank_pairs(pairs, batch_size=batch_size)))

    def ref(pairs: list[tuple[str, str]]) -> np.ndarray:
        return sgpt_scores(model, tokenizer, pairs, batch_size, max_length)

    return {"slimembed": slim, "pytorch": ref}


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--pairs", "n_pairs", type=int, default=160, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--max-length", type=int, default=512, show_default=True)
@click.option("--reps", type=int, default=3, show_default=True)
@click.option("--memory-of", type=click.Choice(["slimembed", "pytorch"]), default=None, hidden=True)
def main(
    workdir: Path,
    n_pairs: int,
    batch_size: int,
    threads: int,
    max_length: int,
    reps: int,
    memory_of: str | None,
) -> None:
    source, exported = workdir / "gpt2-small-shape", workdir / "reranker"
    pairs = bench_pairs(n_pairs)
    if memory_of is not None:  # a fresh process: load one engine, score once, report peak RSS
        if memory_of == "slimembed":
            from slimembed import TextCrossEncoder

            list(TextCrossEncoder(exported, threads=threads).rerank_pairs(pairs, batch_size))
        else:
            import torch
            import transformers

            torch.set_num_threads(threads)
            model = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            sgpt_scores(model, tokenizer, pairs, batch_size, max_length)
        print(peak_rss_mib())
        return
    build_model(source)
    if not (exported / "slimembed.json").is_file():
        from slimembed_export import ExportOptions, export_model

        export_model(str(source), exported, ExportOptions(task="rerank", max_length=max_length))
    engines = _engines(source, exported, threads, batch_size, max_length)
    scores = {name: fn(pairs) for name, fn in engines.items()}
    times = interleaved({name: (lambda f=fn: f(pairs)) for name, fn in engines.items()}, reps)
    memory = {}
    for name in engines:
        cmd = [sys.executable, "-m", "benchmarks.rerank_speed", "--workdir", str(workdir)]
        cmd += ["--pairs", str(n_pairs), "--batch-size", str(batch_size)]
        cmd += ["--threads", str(threads), "--max-length", str(max_length), "--memory-of", name]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        memory[name] = float(out.strip().splitlines()[-1])
    report = {
        "machine": machine(),
        "model": "random GPT-2-small shape (124M parameters, vocab 50,257), BPE 8k tokenizer",
        "pairs": len(pairs),
        "batch_size": batch_size,
        "threads": threads,
        "max_length": max_length,
        "pairs_per_s": {name: summary(t, len(pairs)) for name, t in times.items()},
        "speedup": ratio(times["slimembed"], times["pytorch"]),
        "max_abs_score_diff": float(np.abs(scores["slimembed"] - scores["pytorch"]).max()),
        "peak_rss_mib": {name: round(v) for name, v in memory.items()},
    }
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
