"""``python -m slimembed``: the ``slimembed`` command."""

from slimembed.cli import main

main()
