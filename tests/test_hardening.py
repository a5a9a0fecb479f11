"""Hardening against how services run models and what hostile input does: forked workers,
very long texts, broken graphs, bad strings, huge files, streams of long texts.

Fork tests run in a subprocess whose children are waited for with a deadline and killed after
it, so a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimembed import TextEmbedding
from slimembed.errors import ModelFileError, NonFiniteError
from tests.tiny import minilm_source

REPO = Path(__file__).resolve().parent.parent

# Waits for a forked child with a deadline; prints "hung" and kills it after the deadline.
WAIT = """
import os, sys, time

def wait(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""


def _run(script: str, timeout: float = 240, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", WAIT + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("how", ["threads=2", "SLIMEMBED_THREADS=2", "multiprocessing"])
def test_forked_child_embeds_when_the_pool_was_made_but_not_used(how: str, tmp_path: Path) -> None:
    """gunicorn --preload: the model is loaded with a pool of threads, workers fork before
    any embedding; each child embeds and gets the parent's vectors."""
    script = f"""
import multiprocessing
import numpy as np
from slimembed import TextEmbedding

model = TextEmbedding() if {how!r} == "SLIMEMBED_THREADS=2" else TextEmbedding(threads=2)
texts = ["a text embedded in a forked worker", "and another"]
out = {str(tmp_path)!r}

def embed(i):
    np.save(f"{{out}}/{{i}}.npy", model.encode(texts))
    return i

if {how!r} == "multiprocessing":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map_async(embed, [0, 1]).get(timeout=60) == [0, 1]
else:
    for i in range(2):
        pid = os.fork()
        if pid == 0:
            embed(i)
            os._exit(0)
        code = wait(pid, 60)
        assert code == 0, f"child {{i}}: {{code}}"
want = model.encode(texts)
for i in range(2):
    assert np.array_equal(np.load(f"{{out}}/{{i}}.npy"), want)
print("ok")
"""
    env = {"SLIMEMBED_THREADS": "2"} if how == "SLIMEMBED_THREADS=2" else {}
    assert _run(script, **env).strip() == "ok"


def test_child_forked_while_another_thread_fills_the_piece_cache() -> None:
    """A fork while another thread adds to the piece cache leaves the child a lock nobody will
    release; the child must still tokenize (misses included) and get the right ids."""
    script = f"""
import random, string, threading
from slimembed import _core

tok = _core.Tokenizer({str(minilm_source() / "tokenizer.json")!r})
plain = _core.Tokenizer({str(minilm_source() / "tokenizer.json")!r}, piece_cache=False)

def novel(rng, n):
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(n))

stop = threading.Event()

def fill():
    rng = random.Random(1)
    while not stop.is_set():
        tok.encode([novel(rng, 3000)], add_special_tokens=False)

worker = threading.Thread(target=fill)
worker.start()
rng = random.Random(2)
outcomes = []
try:
    for k in range(30):
        time.sleep(0.005 * (k % 5))
        text = novel(rng, 200)
        want = plain.encode([text], add_special_tokens=False).row(0).tolist()
        pid = os.fork()
        if pid == 0:
            got = tok.encode([text], add_special_tokens=False).row(0).tolist()
            os._exit(0 if got == want else 1)
        outcomes.append(wait(pid, 15))
finally:
    stop.set()
    worker.join()
bad = [o for o in outcomes if o != 0]
print(json.dumps(bad) if bad else "ok")
"""
    assert _run("import json\n" + script).strip() == "ok"


def test_memory_for_a_20_mb_text_follows_the_tokens_kept(minilm_dir: Path) -> None:
    """One 20 MB text on MiniLM (256 tokens kept): peak memory stays within base + 100 MB,
    and the vector is the one of the text's first words."""
    script = f"""
import gc, json
import numpy as np
from benchmarks.datasets import all_texts
from slimembed import TextEmbedding

def kib(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1])

model = TextEmbedding({str(minilm_dir)!r}, threads=1, precision="fp32")
corpus = " ".join(all_texts())
text = (corpus * (20_000_000 // len(corpus) + 1))[:20_000_000]
head = text[:20_000]
model.encode(["warm up"])
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = kib("VmRSS")
vector = model.encode([text])
peak = kib("VmHWM")
same = bool(np.array_equal(vector, model.encode([head])))
print(json.dumps({{"base": base, "peak": peak, "same": same}}))
"""
    report = json.loads(_run(script).strip().splitlines()[-1])
    grown_mb = (report["peak"] - report["base"]) / 1024
    assert grown_mb < 100, f"embedding a 20 MB text grew memory by {grown_mb:.0f} MB"
    assert report["same"], "the long text's vector differs from that of its first 20,000 chars"


def _poisoned(model_dir: Path, out: Path, token: int, value: float) -> Path:
    """A copy of a model directory whose word embedding row ``token`` is ``value``."""
    manifest = json.loads((model_dir / "slimembed.json").read_text())
    out.mkdir()
    for item in model_dir.iterdir():
        if item.is_file():
            (out / item.name).write_bytes(item.read_bytes())
    graph = onnx.load(str(model_dir / manifest["graph_file"]))
    table = next(t for t in graph.graph.initializer if "word_embeddings" in t.name)
    weights = numpy_helper.to_array(table).copy()
    weights[token] = value
    table.CopyFrom(numpy_helper.from_array(weights, table.name))
    onnx.save(graph, str(out / manifest["graph_file"]))
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_hidden_states_raise_naming_the_text(
    value: float, exported: Callable[[str], Path], tmp_path: Path
) -> None:
    source = exported("bert")
    model = TextEmbedding(source, precision="fp32")
    token = model.tokenize(["zebra"]).row(0).tolist()[1]
    broken = TextEmbedding(_poisoned(source, tmp_path / "broken", token, value), precision="fp32")
    texts = [f"text number {i}" for i in range(300)] + ["a zebra", "fine again"]
    with pytest.raises(NonFiniteError, match=r"texts\[300\]") as caught:
        broken.encode(texts, batch_size=8)
    assert caught.value.index == 300
    with pytest.raises(NonFiniteError, match=r"texts\[0\]"):
        list(broken.embed(["zebra"]))
    # Texts without the broken token still embed as before.
    assert np.allclose(broken.encode(texts[:300]), model.encode(texts[:300]), atol=1e-6)


def test_lone_surrogate_names_the_text(minilm_dir: Path) -> None:
    for model in (TextEmbedding(), TextEmbedding(minilm_dir)):
        with pytest.raises(ValueError, match=r"texts\[2\] .*lone surrogate \(U\+D800\)"):
            model.encode(["fine", "also fine", "broken \ud800 text"])
        with pytest.raises(ValueError, match=r"texts\[1\]"):
            model.tokenize(["fine", "\udfff"])


def test_a_huge_tokenizer_file_is_refused_before_it_is_read(
    variant: Callable[..., Path],
) -> None:
    model_dir = variant(TextEmbedding().model_dir)
    os.truncate(model_dir / "tokenizer.json", 1 << 30)  # sparse: no disk is used
    with pytest.raises(ModelFileError, match=r"tokenizer\.json.*1073741824 bytes.*at most"):
        TextEmbedding(model_dir)


def test_first_vectors_of_a_stream_arrive_after_one_batch() -> None:
    """A stream's first vector needs one batch of texts read, not a whole chunk of them."""
    model = TextEmbedding()
    pulled = 0

    def texts() -> Iterator[str]:
        nonlocal pulled
        for i in range(5000):
            pulled += 1
            yield f"text {i} of a long stream"

    stream = model.embed(texts(), batch_size=16)
    first = next(stream)
    assert pulled == 16
    rest = list(stream)
    assert len(rest) == 4999
    assert pulled == 5000
    assert np.array_equal(np.stack([first, *rest]), model.encode(list(texts())))
