"""Dependencies point one way: the runtime (python/slimembed) imports neither the export
pipeline, nor the benchmarks, nor PyTorch's side; those distributions reach the ``slimembed``
command through the ``slimembed.commands`` entry-point group."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

RUNTIME = Path(__file__).resolve().parents[1] / "python" / "slimembed"
FORBIDDEN = ("slimembed_export", "benchmarks", "torch", "transformers")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (relative imports are
    within the runtime and left out)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def forbidden_imports(path: Path) -> list[str]:
    return sorted(
        name
        for name in imported_modules(path)
        if any(name == top or name.startswith(top + ".") for top in FORBIDDEN)
    )


def test_the_runtime_imports_no_other_distribution() -> None:
    modules = sorted(RUNTIME.rglob("*.py"))
    assert len(modules) > 5
    offenders = {
        str(path.relative_to(RUNTIME)): bad for path in modules if (bad := forbidden_imports(path))
    }
    assert offenders == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    # As cli.py's export command did before the export pipeline brought its own command.
    module = tmp_path / "old_cli.py"
    module.write_text(
        "import click\n"
        "def export_command():\n"
        "    try:\n"
        "        from slimembed_export import ExportOptions, export_model\n"
        "    except ImportError:\n"
        "        import benchmarks.cli\n"
    )
    assert forbidden_imports(module) == ["benchmarks.cli", "slimembed_export"]


def test_embed_loads_no_subcommand_of_another_distribution(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from slimembed.cli import main\n"
        "result = CliRunner().invoke(main, ['embed', 'hello', 'world'])\n"
        "assert result.exit_code == 0, result.output\n"
        f"print([m for m in {FORBIDDEN!r} if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("name", "install"), [("export", "./export"), ("bench", "./benchmarks")])
def test_missing_distributions_say_what_to_install(
    name: str, install: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimembed import cli

    monkeypatch.setattr(cli, "_entry_points", dict)
    listed = CliRunner().invoke(cli.main, ["--help"])
    assert listed.exit_code == 0
    assert name in listed.output
    result = CliRunner().invoke(cli.main, [name, "anything", "--flag"])
    assert result.exit_code != 0
    assert f"pip install {install}" in result.output
