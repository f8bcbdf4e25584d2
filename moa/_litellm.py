"""The one module that talks to litellm.

litellm is imported lazily (about 3 s) and only after
``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set, so importing moa never touches
the network.  litellm's exceptions are translated into moa's error tree here
and nowhere else, with any API key scrubbed from their text.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from functools import cache
from types import ModuleType
from typing import Any

from moa._embeddings import embedding_completion, embedding_kwargs, texts
from moa._errors import (
    BadResponseError,
    CallTimeoutError,
    ConfigError,
    MissingAPIKeyError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestRejectedError,
)
from moa._local import alias_of, check_installed, ensure_server, is_local, local_name
from moa._logprobs import first_token_logprobs, mean_logprob
from moa._provider import Completion, Request, TokenCallback, ToolRequest
from moa._secrets import redact

# Seconds allowed beyond a call's own timeout before we cancel it ourselves
# (litellm's timeout bounds each socket read, not the whole call).
_GRACE_S = 1.0


@cache
def litellm_module() -> ModuleType:
    """Import litellm once, offline and quiet."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.drop_params = False
    # litellm leaves a very large heap of import-time objects that live forever; every full
    # garbage collection would walk them again. Moving them to the permanent generation cut
    # the measured CPU per call by ~7% (benchmarks/engine_overhead.py). Opt out: MOA_NO_GC_FREEZE=1.
    if not os.environ.get("MOA_NO_GC_FREEZE"):
        gc.collect()
        gc.freeze()
    module: ModuleType = litellm
    return module


class LiteLLMProvider:
    """Sends requests with ``litellm.acompletion``; computes cost from litellm's price map."""

    def preflight(self, calls: Sequence[tuple[str, Mapping[str, Any], bool]]) -> None:
        """Check, before any call, that every model can be reached: raise a ``ConfigError`` if not.

        ``calls`` holds (model, params, has_key) per planned call.  Local
        models need the ``[local]`` extra; provider models need their usual
        API key variable unless a key is given or ``api_base`` points elsewhere;
        an agent with tools (``tools`` in params) needs a provider litellm calls functions with.
        """
        litellm = litellm_module()  # import now (~3 s), not inside the first call's measured latency
        missing: dict[str, list[str]] = {}
        for model, params, has_key in calls:
            if params.get("tools") and not is_local(model) and not _calls_functions(litellm, model):
                raise ConfigError(
                    f"{model}: litellm sends no function calls (`tools`) to this provider, so this agent cannot "
                    "use tools; give them to a model whose provider has function calling (Ollama: `ollama_chat/...`)"
                )
            if is_local(model):
                check_installed(local_name(model))
            elif not has_key and not params.get("api_base"):
                for variable in _missing_keys(model):
                    missing.setdefault(variable, []).append(model)
        for variable, models in missing.items():
            raise MissingAPIKeyError(variable, models)

    def worst_case_cost(self, model: str, params: Mapping[str, Any], prompt_tokens: int) -> float | None:
        """The most a call can cost: ``prompt_tokens`` in, ``max_tokens`` (or the model's limit) out.

        None when litellm has no price for the model; 0.0 for local models.
        Together models litellm prices by size after a call are priced the same way here.
        """
        if is_local(model):
            return 0.0
        litellm = litellm_module()
        completion_tokens = int(params.get("max_tokens") or self.max_output_tokens(model))
        for name, provider in _price_keys(model):
            try:
                prompt_cost, completion_cost = litellm.cost_per_token(
                    model=name,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    custom_llm_provider=provider,
                )
            except Exception:  # litellm raises plain Exceptions for unmapped models
                continue
            total = float(prompt_cost) + float(completion_cost)
            if total > 0 or _is_free(litellm, name):
                return total
        return None

    def max_output_tokens(self, model: str) -> int:
        """The model's own output limit from litellm's map (4096 when unknown)."""
        if is_local(model):
            return 4096
        return _max_output_tokens(litellm_module(), model)

    async def complete(self, request: Request, on_token: TokenCallback | None = None) -> Completion:
        litellm = litellm_module()
        model, params, api_key = request.model, dict(request.params), request.api_key
        if is_local(model):
            name = local_name(model)
            server = await ensure_server(name, embedding=request.embed)
            alias = alias_of(name)
            _price_as_free(litellm, alias)
            model, params["api_base"], api_key = f"openai/{alias}", server.base_url, "local"
        elif api_key is None and params.get("api_base") and model.startswith("openai/"):
            # OpenAI-compatible servers often need no key, but the OpenAI client insists on one.
            api_key = None if os.environ.get("OPENAI_API_KEY") else "unused"
        timeout = float(params.get("timeout") or 120.0)
        # Retries are ours (moa._call.retry): switch off the OpenAI client's own.
        kwargs: dict[str, Any] = {**params, "max_retries": 0}
        if api_key is not None:
            kwargs["api_key"] = api_key
        try:
            async with asyncio.timeout(timeout + _GRACE_S):
                if request.embed:
                    embedded = await litellm.aembedding(model=model, input=texts(request), **embedding_kwargs(kwargs))
                    return embedding_completion(embedded, request, _cost(litellm, embedded, request.model))
                if on_token is None:
                    response = await litellm.acompletion(model=model, messages=list(request.messages), **kwargs)
                else:
                    response = await self._stream(litellm, model, request, kwargs, on_token)
        except TimeoutError as exc:
            raise CallTimeoutError(f"no answer within {timeout:g} s", model=request.model) from exc
        except ProviderError:
            raise
        except Exception as exc:
            # Not chained: the provider's text can echo the request's key (see moa._errors).
            raise translate(exc, request) from None
        return _completion(litellm, response, request)

    async def _stream(
        self,
        litellm: ModuleType,
        model: str,
        request: Request,
        kwargs: dict[str, Any],
        on_token: TokenCallback,
    ) -> Any:
        stream = await litellm.acompletion(
            model=model,
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
        # litellm closes every stream with a finish_reason of its own; whether the *server* sent one
        # is kept on the wrapper. None means a cut connection or a body that was no event stream.
        if getattr(stream, "received_finish_reason", "stop") is None:
            # A cut connection, or a body that was no event stream: never take a partial answer as whole.
            raise ProviderUnavailableError("the stream ended before the answer was finished", model=request.model)
        return litellm.stream_chunk_builder(chunks, messages=list(request.messages))


def _calls_functions(litellm: ModuleType, model: str) -> bool:
    """Whether litellm passes ``tools`` to this model's provider (True when it cannot tell)."""
    try:
        name, provider, _, _ = litellm.get_llm_provider(model)
        supported = litellm.get_supported_openai_params(model=name, custom_llm_provider=provider)
    except Exception:  # an unknown provider: let the call itself report it
        return True
    return supported is None or "tools" in supported


def _max_output_tokens(litellm: ModuleType, model: str) -> int:
    """The model's own output limit from litellm's map (4096 when unknown)."""
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return 4096
    return int(info.get("max_output_tokens") or info.get("max_tokens") or 4096)


def _price_keys(model: str) -> list[tuple[str, str | None]]:
    """The names litellm prices a model under: the model string, then (Together) its size bucket.

    litellm's own ``completion_cost`` prices an unlisted Together model by the
    parameter count in its name (``...-72B-...`` -> ``together-ai-41.1b-80b``);
    the worst case must use the same price the finished call will get.
    """
    keys: list[tuple[str, str | None]] = [(model, None)]
    if model.startswith("together_ai/") or "togethercomputer" in model:
        from litellm.llms.together_ai.cost_calculator import get_model_params_and_category
        from litellm.types.utils import CallTypes

        bucket = get_model_params_and_category(model, call_type=CallTypes.completion)
        if bucket != model.lower():
            keys.append((bucket, "together_ai"))
    return keys


def _is_free(litellm: ModuleType, model: str) -> bool:
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return False
    return bool(info.get("input_cost_per_token") == 0 and info.get("output_cost_per_token") == 0)


def _missing_keys(model: str) -> list[str]:
    """The provider's usual key variables that are not set (empty when unknown)."""
    try:
        report = litellm_module().validate_environment(model=model)
    except Exception:  # an unknown provider: let the call itself report it
        return []
    return [str(k) for k in report.get("missing_keys") or []] if not report.get("keys_in_environment") else []


@cache
def _price_as_free(litellm: ModuleType, name: str) -> None:
    """Local models cost nothing: say so, instead of "unknown"."""
    litellm.register_model(
        {
            f"openai/{name}": {
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )


def _completion(litellm: ModuleType, response: Any, request: Request) -> Completion:
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise BadResponseError("the response has no choices", model=request.model)
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    tool_calls = _tool_calls(message) if "tools" in request.params else ()
    if text is None and tool_calls:
        text = ""  # a model that only calls functions writes no text
    if not isinstance(text, str):
        raise BadResponseError("the response has no text content", model=request.model)
    usage = getattr(response, "usage", None)
    return Completion(
        top_logprobs=first_token_logprobs(choices[0]),
        mean_logprob=mean_logprob(choices[0]),
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cost_usd=_cost(litellm, response, request.model),
        finish_reason=_finish_reason(choices[0]),
        tool_calls=tool_calls,
    )


def _tool_calls(message: Any) -> tuple[ToolRequest, ...]:
    """The function calls of an answer (OpenAI's shape, which litellm gives for every provider)."""
    found = []
    for number, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = call.get("function") if isinstance(call, dict) else getattr(call, "function", None)
        name = function.get("name") if isinstance(function, dict) else getattr(function, "name", None)
        arguments = function.get("arguments") if isinstance(function, dict) else getattr(function, "arguments", None)
        ident = call.get("id") if isinstance(call, dict) else getattr(call, "id", None)
        if not isinstance(arguments, str):  # some providers send an object, not its JSON text
            arguments = "" if arguments is None else json.dumps(arguments)
        found.append(ToolRequest(ident if isinstance(ident, str) else f"call{number}", str(name or ""), arguments))
    return tuple(found)


def _finish_reason(choice: Any) -> str | None:
    reason = getattr(choice, "finish_reason", None)
    return reason if isinstance(reason, str) else None


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
    message = _first_line(exc, request.api_key)
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


def _first_line(exc: Exception, secret: str | None) -> str:
    """The exception's first line, secrets masked *before* it is cut (a cut key would escape the mask)."""
    text = redact(str(exc).strip() or type(exc).__name__, [secret])
    line = text.splitlines()[0]
    # litellm repeats the class name: "litellm.RateLimitError: RateLimitError: OpenAIException - ..."
    name = type(exc).__name__
    for prefix in (f"litellm.{name}: ", f"{name}: "):
        line = line.removeprefix(prefix)
    return line if len(line) <= 500 else line[:497] + "..."


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
