"""``python -m moa ...`` is the same as ``moa ...``."""

from moa.cli import entry

entry()
