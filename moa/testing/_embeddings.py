"""Embeddings for the loopback server and the fake provider: a hashed bag of words.

Each word (lower-cased, ``\\w+``) adds one to the coordinate its hash picks, and
the vector is scaled to length 1; so texts that share words are near, and the
nearest-neighbour router can be tested on prompts whose routes are known.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

DIMENSIONS = 64

#: Gives the vector of one text (the server's ``embedder``).
Embedder = Callable[[str], list[float]]


def word_vector(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A text's hashed bag of words, of length 1 (all zeros for a text with no word)."""
    vector = [0.0] * dimensions
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dimensions] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def embedding_payload(body: dict[str, Any], embedder: Embedder) -> dict[str, Any]:
    """The body of an OpenAI ``/v1/embeddings`` answer to ``body`` (its ``input``: a text or a list of them)."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else [str(text) for text in raw or []]
    tokens = sum(len(text.split()) for text in texts)
    return {
        "object": "list",
        "model": body.get("model"),
        "data": [{"object": "embedding", "index": i, "embedding": embedder(text)} for i, text in enumerate(texts)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
