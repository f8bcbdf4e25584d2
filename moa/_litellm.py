"""The one module that talks to litellm.

litellm is imported lazily (about 3 s) and only after
``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set, so importing moa never touches
the network.  litellm's exceptions are translated into moa's error tree here
and nowhere else, with any API key scrubbed from their text.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from email.utils import parsedate_to_datetime
from functools import cache
from types import ModuleType
from typing import Any

from moa._errors import (
    BadResponseError,
    CallTimeoutError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestRejectedError,
)
from moa._provider import Completion, Request, TokenCallback

# Seconds allowed beyond a call's own timeout before we cancel it ourselves
# (litellm's timeout bounds each socket read, not the whole call).
_GRACE_S = 1.0
_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|tgp|gsk|xai|key)[-_][A-Za-z0-9_\-]{8,}")


@cache
def litellm_module() -> ModuleType:
    """Import litellm once, offline and quiet."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.drop_params = False
    module: ModuleType = litellm
    return module


class LiteLLMProvider:
    """Sends requests with ``litellm.acompletion``; computes cost from litellm's price map."""

    async def complete(self, request: Request, on_token: TokenCallback | None = None) -> Completion:
        litellm = litellm_module()
        params = dict(request.params)
        timeout = float(params.get("timeout") or 120.0)
        # Retries are ours (moa._retry): switch off the OpenAI client's own.
        kwargs: dict[str, Any] = {**params, "max_retries": 0}
        if request.api_key is not None:
            kwargs["api_key"] = request.api_key
        try:
            async with asyncio.timeout(timeout + _GRACE_S):
                if on_token is None:
                    response = await litellm.acompletion(
                        model=request.model, messages=list(request.messages), **kwargs
                    )
                else:
                    response = await self._stream(litellm, request, kwargs, on_token)
        except TimeoutError as exc:
            raise CallTimeoutError(f"no answer within {timeout:g} s", model=request.model) from exc
        except ProviderError:
            raise
        except Exception as exc:
            raise translate(exc, request) from exc
        return _completion(litellm, response, request)

    async def _stream(
        self, litellm: ModuleType, request: Request, kwargs: dict[str, Any], on_token: TokenCallback
    ) -> Any:
        stream = await litellm.acompletion(
            model=request.model,
            messages=list(request.messages),
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            choices = getattr(chunk, "choices", None) or []
            delta = getattr(choices[0], "delta", None) if choices else None
            text = getattr(delta, "content", None) if delta is not None else None
            if text:
                on_token(text)
        if not chunks:
            raise BadResponseError("the stream ended before any data", model=request.model)
        return litellm.stream_chunk_builder(chunks, messages=list(request.messages))


def _completion(litellm: ModuleType, response: Any, request: Request) -> Completion:
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise BadResponseError("the response has no choices", model=request.model)
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise BadResponseError("the response has no text content", model=request.model)
    usage = getattr(response, "usage", None)
    return Completion(
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cost_usd=_cost(litellm, response, request.model),
    )


def _cost(litellm: ModuleType, response: Any, model: str) -> float | None:
    """USD cost from litellm's price map; None when the model is not priced.

    litellm prices every response itself (``_hidden_params["response_cost"]``,
    None when it could not); computing it again would cost ~0.7 ms a call.
    Without that, the requested model string (with its provider prefix) is
    tried first: some providers answer with a bare or versioned name.
    """
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        known = hidden["response_cost"]
        return float(known) if isinstance(known, int | float) else None
    for kwargs in ({"model": model}, {}):
        try:
            cost = litellm.completion_cost(completion_response=response, **kwargs)
        except Exception:  # litellm raises plain Exceptions for unmapped models
            continue
        if cost is not None:
            return float(cost)
    return None


def translate(exc: Exception, request: Request) -> ProviderError:
    """Map a litellm (or openai/httpx) exception onto moa's error tree."""
    litellm = litellm_module()
    model = request.model
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    message = redact(_first_line(exc), request.api_key)
    kind: type[ProviderError]
    if isinstance(exc, litellm.Timeout):
        timeout = float(request.params.get("timeout") or 120.0)
        return CallTimeoutError(f"no answer within {timeout:g} s", model=model)
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return RateLimitedError(message, model=model, status_code=429, retry_after=_retry_after(exc))
    elif (status is not None and status >= 500) or isinstance(exc, litellm.APIConnectionError):
        kind = ProviderUnavailableError
    elif status is not None and 400 <= status < 500:
        kind = RequestRejectedError
    elif isinstance(exc, litellm.APIResponseValidationError | ValueError | KeyError | TypeError):
        kind = BadResponseError
    else:
        kind = RequestRejectedError
    return kind(f"{type(exc).__name__}: {message}", model=model, status_code=status)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    # litellm repeats the class name: "litellm.RateLimitError: RateLimitError: OpenAIException - ..."
    name = type(exc).__name__
    for prefix in (f"litellm.{name}: ", f"{name}: "):
        line = line.removeprefix(prefix)
    return line if len(line) <= 500 else line[:497] + "..."


def redact(text: str, secret: str | None = None) -> str:
    """Remove an API key, and anything shaped like one, from a message."""
    if secret and len(secret) >= 6:  # shorter "keys" are placeholders; replacing them mangles text
        text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("***", text)


def _retry_after(exc: Exception) -> float | None:
    """The Retry-After hint of a 429 in seconds (delta-seconds or an HTTP date)."""
    # litellm keeps the real headers in `litellm_response_headers`; `response` is often a stub.
    candidates = [
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ]
    value = None
    for headers in candidates:
        if headers and hasattr(headers, "get"):
            value = headers.get("retry-after") or headers.get("Retry-After")
            if value:
                break
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(str(value)).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
