"""``moa serve``: every recipe as an OpenAI-compatible model (``app.py``)."""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
