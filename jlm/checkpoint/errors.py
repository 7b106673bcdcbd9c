"""The one exception the checkpoint readers and writers raise for a bad or unsupported file."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; the message names the file (and tensor)."""
