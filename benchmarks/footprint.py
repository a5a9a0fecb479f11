"""Install footprint: the size on disk of a distribution and everything it requires, as
installed in this environment (importlib.metadata; no network).

Requirements are followed through their environment markers (extras are not taken). A
distribution installed in editable mode lists only a ``.pth`` file, so the directories of its
top-level packages are measured instead.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def _dist(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def _requires(dist: md.Distribution) -> list[str]:
    names = []
    for text in dist.requires or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def closure(name: str) -> tuple[list[str], list[str]]:
    """The installed distributions ``name`` needs (itself first) and the required ones that
    are not installed."""
    seen: dict[str, None] = {}
    absent: list[str] = []
    stack = [name]
    while stack:
        current = canonicalize_name(stack.pop())
        if current in seen or current in absent:
            continue
        dist = _dist(current)
        if dist is None:
            absent.append(current)
            continue
        seen[current] = None
        stack.extend(reversed(_requires(dist)))
    return list(seen), absent


def _editable(dist: md.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    return bool(text and json.loads(text).get("dir_info", {}).get("editable"))


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "target" not in p.parts)


def dist_size(name: str) -> int:
    """Bytes on disk of one installed distribution's files."""
    dist = _dist(name)
    if dist is None:
        return 0
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    if _editable(dist):
        top = (dist.read_text("top_level.txt") or "").split() or [name.replace("-", "_")]
        for module in top:
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    total += _tree_size(Path(location))
    return total


def footprint(name: str) -> dict[str, object]:
    """Size of ``name``'s dependency closure in MiB, its largest members and what is absent."""
    names, absent = closure(name)
    sizes = {n: dist_size(n) for n in names}
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    return {
        "distribution": name,
        "mib": sum(sizes.values()) / 2**20,
        "packages": len(names),
        "largest": {n: round(s / 2**20, 1) for n, s in largest},
        "not_installed": absent,
    }
