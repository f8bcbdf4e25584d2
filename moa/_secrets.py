"""Secrets: which values are keys, and the one function that scrubs them from text.

A secret is
- the value of any environment variable whose name says it holds one (it contains
  ``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASSWD`` or ``CREDENTIAL``): every
  variable litellm reads a provider's key from is named so (``OPENAI_API_KEY``,
  ``TOGETHERAI_API_KEY``, ``WATSONX_APIKEY``, ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``...),
  whatever the shape of the key itself;
- the value of every variable a recipe names in ``api_key_env``, and every key given
  to ``moa.run(api_key=...)`` (registered when the run starts);
- anything shaped like a key (``sk-...``, ``Bearer ...``), known or not.

Error text from providers, exceptions, logs and traces pass through ``redact``
before they are stored or shown.  A key echoed only in part (its first 12 or
more characters, as a provider that cuts long values does) is masked too.
Values shorter than 6 characters are not treated as secrets: replacing them
(``1``, ``true``) would mangle ordinary text, and no real key is that short.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_CHARS = 6
PREFIX_CHARS = 12  # an echo of at least this many leading characters of a key is masked
_NAME_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
#: Key shapes worth catching even when the key was never seen: provider prefixes and bearer tokens.
_KEY_SHAPE = re.compile(
    r"\b(?:sk|pk|rk|tgp|gsk|xai|hf|ghp|gho|github_pat)[-_][A-Za-z0-9_\-]{8,}"
    r"|\bAIza[A-Za-z0-9_\-]{30,}"
    r"|\b[Bb]earer\s+[A-Za-z0-9_\-.~+/=]{8,}"
)

_registered: set[str] = set()
_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    upper = name.upper()
    return any(marker in upper for marker in _NAME_MARKERS)


def register(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (a key moa was handed or read)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:
            _registered.add(value)


def known_secrets() -> list[str]:
    """Every secret value known right now, longest first (so no secret is left half-masked)."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_CHARS}
    with _lock:
        values |= _registered
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """``text`` with every known secret (and ``extra``) masked, and anything key-shaped too."""
    if not text:
        return text
    for secret in [*(e for e in extra if e and len(e) >= MIN_SECRET_CHARS), *known_secrets()]:
        if secret in text:
            text = text.replace(secret, MASK)
        elif len(secret) > PREFIX_CHARS and secret[:PREFIX_CHARS] in text:
            text = _mask_prefixes(text, secret)
    return _KEY_SHAPE.sub(MASK, text)


def _mask_prefixes(text: str, secret: str) -> str:
    """Mask every place where the text holds the secret's first ``PREFIX_CHARS`` or more characters."""
    head, parts, start = secret[:PREFIX_CHARS], [], 0
    while (found := text.find(head, start)) != -1:
        end = found + PREFIX_CHARS
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        parts += [text[start:found], MASK]
        start = end
    return "".join(parts) + text[start:]


def looks_like_a_key(value: str) -> bool:
    """Whether a string is a known secret or has a key's shape (``sk-...``, ``Bearer ...``)."""
    return value in known_secrets() or _KEY_SHAPE.search(value) is not None


def looks_like_a_key_not_a_name(value: str) -> bool:
    """Whether a string given where a variable's *name* belongs (``api_key_env``) is probably a key.

    Variable names are short words joined by underscores; keys are long runs of
    mixed characters.  Such a value is refused without being shown.
    """
    if looks_like_a_key(value):
        return True
    return len(value) >= 20 and "_" not in value and any(c.isdigit() for c in value)
