"""Test helpers for moa and for code built on it.

- ``FakeProvider``: in-process, records every request, scripted replies.
- ``LoopbackServer``: a real OpenAI-compatible HTTP server on 127.0.0.1 with
  configurable latency and fault modes, for driving real litellm.
"""

from moa.testing.fake import FakeProvider, RecordedRequest
from moa.testing.server import Fault, LoopbackServer

__all__ = ["Fault", "FakeProvider", "LoopbackServer", "RecordedRequest"]
