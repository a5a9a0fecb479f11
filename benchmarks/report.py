"""Reports from the suite's records: a terminal table, JSON, Markdown and PNG plots."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _rows(records: Iterable[Record], measure: str, **match: Any) -> list[Record]:
    return [
        r
        for r in records
        if r["measure"] == measure and all(r.get(k) == v for k, v in match.items())
    ]


def _models(records: list[Record]) -> list[str]:
    return [r["model"] for r in records if r["measure"] == "model"]


def _engines(records: list[Record], model: str) -> list[str]:
    return [e for r in _rows(records, "model", model=model) for e in r["engines"]]


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits == 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def model_table(records: list[Record], model: str) -> tuple[list[str], list[list[str]]]:
    """One row per engine: throughput per batch size, speed against the baseline, latency,
    cold start, memory and fidelity."""
    thr = _rows(records, "throughput", model=model)
    source = thr[0]["source"] if thr else None
    batches = sorted({r["batch_size"] for r in thr if r["source"] == source})
    base = thr[0]["baseline"] if thr else None
    header = ["engine"]
    header += [f"texts/s b{b}" for b in batches]
    if batches:
        header += [f"tokens/s b{batches[-1]}", f"vs {base} b{batches[-1]}"]
    header += ["p50 ms", "p99 ms", "cold start s", "peak RSS MiB", "cos min", "STS", "SciFact"]
    rows = []
    for engine in _engines(records, model):
        row = [engine]
        by_batch = {
            r["batch_size"]: r for r in thr if r["engine"] == engine and r["source"] == source
        }
        row += [
            _fmt(by_batch[b]["texts_per_s"]["median"]) if b in by_batch else "—" for b in batches
        ]
        if batches:
            last = by_batch.get(batches[-1])
            row += [
                _fmt(last["tokens_per_s"]["median"]) if last else "—",
                _ratio(last["vs_baseline"]) if last else "—",
            ]
        lat = _rows(records, "latency", model=model, engine=engine)
        row += [_fmt(lat[0]["ms"]["p50"], 2), _fmt(lat[0]["ms"]["p99"], 2)] if lat else ["—"] * 2
        proc = _rows(records, "process", model=model, engine=engine)
        row += (
            [_fmt(proc[0]["cold_start_s"]["median"], 2), _fmt(proc[0]["peak_rss_mib"]["median"])]
            if proc
            else ["—"] * 2
        )
        fid = _rows(records, "fidelity", model=model, engine=engine)
        f = fid[0] if fid else {}
        row += [
            _fmt(f.get("cosine_min"), 5),
            _fmt(f.get("sts_spearman"), 4),
            _fmt(f.get("scifact_ndcg10"), 4),
        ]
        rows.append(row)
    return header, rows


def scaling_table(records: list[Record], model: str) -> tuple[list[str], list[list[str]]]:
    rows_in = _rows(records, "scaling", model=model)
    engines = list(dict.fromkeys(r["engine"] for r in rows_in))
    lengths = sorted({r["length"] for r in rows_in})
    header = (
        ["tokens/text"] + [f"{e} texts/s" for e in engines] + [f"{e} tokens/s" for e in engines]
    )
    rows = []
    for n in lengths:
        got = {r["engine"]: r for r in rows_in if r["length"] == n}
        trunc = any(r["truncated"] for r in got.values())
        row = [f"{n}{' (truncated)' if trunc else ''}"]
        row += [_fmt(got[e]["texts_per_s"]["median"]) if e in got else "—" for e in engines]
        row += [_fmt(got[e]["tokens_per_s"]["median"]) if e in got else "—" for e in engines]
        rows.append(row)
    return header, rows


def footprint_table(records: list[Record]) -> tuple[list[str], list[list[str]]]:
    header = ["engine", "distribution", "installed MiB", "packages", "largest"]
    rows = [
        [
            r["engine"],
            r["distribution"],
            _fmt(r["mib"]),
            str(r["packages"]),
            ", ".join(f"{k} {v:.0f}" for k, v in list(r["largest"].items())[:3]),
        ]
        for r in _rows(records, "footprint")
    ]
    return header, rows


def speedups(records: list[Record]) -> list[str]:
    """slimembed's speed-up over each other engine, per model, source and batch size, from the
    per-pair ratios of the interleaved repetitions."""
    from benchmarks.timing import ratio

    lines = []
    for model in _models(records):
        thr = _rows(records, "throughput", model=model)
        for key in dict.fromkeys((r["source"], r["batch_size"]) for r in thr):
            group = {r["engine"]: r for r in thr if (r["source"], r["batch_size"]) == key}
            ours = [e for e in group if e.startswith("slimembed")]
            others = [e for e in group if not e.startswith("slimembed")]
            for a in ours:
                parts = [
                    f"{b} {_ratio(ratio(group[a]['seconds'], group[b]['seconds']))}" for b in others
                ]
                if parts:
                    lines.append(f"{model}, {key[0]}, batch {key[1]}: {a} vs " + "; ".join(parts))
    return lines


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def terminal(report: Record) -> str:
    records = report["records"]
    parts = [_describe(report)]
    for model in _models(records):
        parts += [f"\n== {model} ==", _text_table(*model_table(records, model))]
        if _rows(records, "scaling", model=model):
            parts += [
                f"\n{model}: cost against text length",
                _text_table(*scaling_table(records, model)),
            ]
    if _rows(records, "footprint"):
        parts += ["\ninstall footprint (dependency closure as installed here)"]
        parts += [_text_table(*footprint_table(records))]
    lines = speedups(records)
    if lines:
        parts += ["\nslimembed speed-up (median of per-pair ratios, range):", *lines]
    if report["notes"]:
        parts += ["\nnotes:", *(f"- {n}" for n in report["notes"])]
    return "\n".join(parts)


def _describe(report: Record) -> str:
    m = report["machine"]
    cfg = report["config"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB, Python {m['python']}, "
        f"git {m['git']}; {cfg['threads']} threads for every engine, "
        f"{cfg['reps']} interleaved repetitions after one warm-up"
    )


def markdown(report: Record, plots: list[Path], out_dir: Path) -> str:
    records = report["records"]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    cfg = report["config"]
    parts = [
        "## slimembed bench",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {_describe(report)}. Versions: {versions}.",
        "",
        f"Texts: {', '.join(cfg['sources'])} (first {cfg['n_texts']}); batch sizes "
        f"{', '.join(map(str, cfg['batch_sizes']))}; latency over {cfg['latency_calls']} single "
        f"texts; cold start and peak memory: {cfg['probe_reps']} fresh processes per engine, "
        f"interleaved, embedding the same texts at batch {cfg['probe_batch_size']}.",
    ]
    for model in _models(records):
        info = _rows(records, "model", model=model)[0]
        parts += [
            "",
            f"### {model} ({info['kind']}, max length {info['max_length']}, dim {info['dim']})",
            "",
            f"Fidelity reference: {info['reference']}.",
            "",
            _md_table(*model_table(records, model)),
        ]
        if _rows(records, "scaling", model=model):
            parts += [
                "",
                f"Cost against text length ({model}):",
                "",
                _md_table(*scaling_table(records, model)),
            ]
    if _rows(records, "footprint"):
        parts += ["", "### Install footprint", "", _md_table(*footprint_table(records))]
    lines = speedups(records)
    if lines:
        parts += ["", "### slimembed speed-up (median of per-pair ratios, range)", ""]
        parts += [f"- {line}" for line in lines]
    if plots:
        parts += ["", "### Plots", ""]
        parts += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
    if report["notes"]:
        parts += ["", "### Notes", "", *(f"- {n}" for n in report["notes"])]
    return "\n".join(parts) + "\n"


def plots(report: Record, out_dir: Path) -> tuple[list[Path], str | None]:
    """PNG plots: throughput by engine, latency distribution, scaling curve. Without matplotlib
    nothing is drawn and the note says so."""
    if importlib.util.find_spec("matplotlib") is None:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib)"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = report["records"]
    written: list[Path] = []
    for model in _models(records):
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", model).strip("-")
        thr = _rows(records, "throughput", model=model)
        if thr:
            source = thr[0]["source"]
            engines = list(dict.fromkeys(r["engine"] for r in thr))
            batches = sorted({r["batch_size"] for r in thr})
            fig, ax = plt.subplots(figsize=(8, 4.5))
            width = 0.8 / len(engines)
            for i, e in enumerate(engines):
                got = {
                    r["batch_size"]: r for r in thr if r["engine"] == e and r["source"] == source
                }
                xs = [j + i * width for j, b in enumerate(batches) if b in got]
                med = [got[b]["texts_per_s"]["median"] for b in batches if b in got]
                lo = [
                    m - got[b]["texts_per_s"]["min"]
                    for m, b in zip(med, [b for b in batches if b in got], strict=True)
                ]
                hi = [
                    got[b]["texts_per_s"]["max"] - m
                    for m, b in zip(med, [b for b in batches if b in got], strict=True)
                ]
                ax.bar(xs, med, width, yerr=[lo, hi], label=e, capsize=2)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))])
            ax.set_xticklabels([f"batch {b}" for b in batches])
            ax.set_ylabel("texts/s (median, min-max)")
            ax.set_title(f"{model}: throughput on {source}")
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / f"throughput-{slug}.png"))
        lat = _rows(records, "latency", model=model)
        if lat:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            ax.boxplot(
                [r["samples_ms"] for r in lat],
                tick_labels=[r["engine"] for r in lat],
                whis=(1, 99),
                showfliers=False,
            )
            ax.set_yscale("log")
            ax.set_ylabel("ms per single text (box: quartiles, whiskers: p1-p99)")
            ax.set_title(f"{model}: single-text latency")
            ax.tick_params(axis="x", labelsize=8)
            written.append(_save(fig, out_dir / f"latency-{slug}.png"))
        sc = _rows(records, "scaling", model=model)
        if sc:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            for e in dict.fromkeys(r["engine"] for r in sc):
                pts = sorted(
                    (r["length"], r["tokens_per_s"]["median"]) for r in sc if r["engine"] == e
                )
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens per text")
            ax.set_ylabel("tokens/s (median)")
            ax.set_title(f"{model}: cost against text length")
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / f"scaling-{slug}.png"))
    return written, None


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write(report: Record, out_dir: Path) -> dict[str, Path]:
    """``results.json``, ``report.md`` and the plots in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn, note = plots(report, out_dir)
    if note:
        report["notes"].append(note)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["markdown"].write_text(markdown(report, drawn, out_dir))
    return paths
