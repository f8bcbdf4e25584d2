"""``python -m moa ...`` is the same as ``moa ...``."""

from moa._cli import entry

entry()
