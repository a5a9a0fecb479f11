"""Errors of the export pipeline."""

from slimembed.errors import SlimembedError


class ExportError(SlimembedError, ValueError):
    """The source model cannot be exported as asked, or the export failed its parity check."""
