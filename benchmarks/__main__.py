"""``python -m benchmarks``: the benchmark CLI, the same command as ``slimembed bench``."""

from benchmarks.cli import main

main()
