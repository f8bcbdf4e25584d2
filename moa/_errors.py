"""The one error tree of moa.

```
MoAError
├── ConfigError            your mistake: fix the recipe, template, prompt or argument
│   ├── RecipeError        a recipe that cannot be parsed or validated (names file and field)
│   ├── TemplateError      a template that cannot be found, compiled or rendered
│   ├── PromptError        an empty or malformed prompt
│   ├── MissingAPIKeyError an env var named by ``api_key_env`` is not set
│   └── UnpricedModelError a budget is set but a model has no known price
└── RunError               it went wrong at run time
    ├── ProviderError      one call failed (carries layer, agent, model, status, transient)
    │   ├── RateLimitedError      429 (honours Retry-After)
    │   ├── ProviderUnavailableError  5xx or a connection failure
    │   ├── CallTimeoutError      no answer within the call's timeout
    │   ├── BadResponseError      the provider answered with something unusable
    │   └── RequestRejectedError  400/401/403/404/422: never retried
    ├── QuorumError        a layer had fewer successes than its ``min_success``
    ├── BudgetExceeded     the run's ``max_cost_usd`` would be passed (carries ``.partial``)
    ├── DeadlineExceeded   the run's ``deadline_s`` passed (carries ``.partial``)
    ├── VerificationError  a ``verify`` stage: nothing passed, repairs and fallbacks included (``.partial``)
    ├── StageError         a stage raised something unexpected or passed on nothing (``.partial``)
    └── CallbackError      the caller's ``on_event`` / ``on_token`` raised (carries ``.partial``)
```

Foreign exceptions are translated in exactly one place each: litellm's in
``moa._litellm``, YAML's and pydantic's in ``moa._loader``, Jinja's in
``moa._templates``.  The text of every moa error is scrubbed of secrets
(``moa._secrets.redact``) when it is made.  A foreign exception whose text can
echo a request (a provider's error body, a pydantic input value) is *not*
chained, so that an uncaught error's traceback cannot print a key; its class
name is kept on the error instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moa._secrets import redact


class MoAError(Exception):
    """Base class of every error moa raises on purpose.  Its text never holds a secret."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


# --------------------------------------------------------------------- config


class ConfigError(MoAError):
    """A mistake in what the user gave us: nothing was called yet."""


class RecipeError(ConfigError):
    """A recipe failed to parse or validate.

    ``source`` names where the recipe came from (a file path, ``<built-in NAME>``,
    ``<yaml text>`` or ``<dict>``); ``problems`` holds ``(field_path, message)``
    pairs such as ``("layers[1].agents[0].model", "Field required")``.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = [(path, redact(message)) for path, message in problems]
        lines = [f"invalid recipe {source}:"]
        for path, message in self.problems:
            lines.append(f"  {path}: {message}" if path else f"  {message}")
        super().__init__("\n".join(lines))


class TemplateError(ConfigError):
    """A prompt template could not be found, compiled, checked or rendered."""


class PromptError(ConfigError):
    """The prompt given to ``run`` is empty or not a valid conversation."""


class MissingAPIKeyError(ConfigError):
    """An ``api_key_env`` variable named in the recipe is not set."""

    def __init__(self, variable: str, models: Sequence[str]) -> None:
        self.variable = variable
        self.models = sorted(set(models))
        shown = ", ".join(self.models[:2]) + (f" and {len(self.models) - 2} more" if len(self.models) > 2 else "")
        super().__init__(f"{variable} is not set (needed by {shown}); export it and try again")


class UnpricedModelError(ConfigError):
    """A budget is set, but litellm has no price for some models (opt in with ``allow_unpriced``)."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = sorted(set(models))
        super().__init__(
            f"no known price for {', '.join(self.models)}: a budget cannot bound their cost; "
            "pass allow_unpriced=True (CLI: --allow-unpriced) to count them as free"
        )


# -------------------------------------------------------------------- runtime


class RunError(MoAError):
    """Something failed while the pipeline was running."""


@dataclass(frozen=True)
class CallSite:
    """Where in a pipeline a call was made: for error messages and events."""

    layer: int
    agent: int
    sample: int
    agent_name: str
    model: str

    def describe(self) -> str:
        return f"layer {self.layer}, agent {self.agent} ({self.agent_name}), sample {self.sample}, model {self.model}"


class ProviderError(RunError):
    """One provider call failed.

    ``transient`` says whether trying again may help (rate limits, 5xx,
    timeouts, dropped connections); ``retry_after`` is the server's hint in
    seconds, when it gave one.  ``site`` is filled in by the engine once the
    call is known to belong to a layer and agent.
    """

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        status_code: int | None = None,
        retry_after: float | None = None,
        site: CallSite | None = None,
    ) -> None:
        self.reason = redact(message)
        self.model = model
        self.status_code = status_code
        self.retry_after = retry_after
        self.site = site
        self.attempts = 1  # set by the retry layer to the attempts actually made
        super().__init__(message)

    def __str__(self) -> str:
        where = self.site.describe() if self.site else (f"model {self.model}" if self.model else "")
        status = f" [HTTP {self.status_code}]" if self.status_code else ""
        return f"{where}: {self.reason}{status}" if where else f"{self.reason}{status}"


class RateLimitedError(ProviderError):
    """HTTP 429: the provider asked us to slow down."""

    transient = True


class ProviderUnavailableError(ProviderError):
    """HTTP 5xx or a connection failure."""

    transient = True


class CallTimeoutError(ProviderError):
    """The provider did not answer within the call's timeout."""

    transient = True


class BadResponseError(ProviderError):
    """The provider answered, but with a body we cannot use (no choices, no text)."""


class RequestRejectedError(ProviderError):
    """HTTP 4xx other than 429: the request itself is wrong; retrying cannot help."""


class QuorumError(RunError):
    """A layer ended with fewer successful agents than its ``min_success``.

    ``failures`` holds every failed call's error (each names layer, agent and
    model), so one exception lists every cause.
    """

    def __init__(
        self,
        layer: int,
        needed: int,
        succeeded: int,
        planned: int,
        failures: Sequence[BaseException],
        outputs: Sequence[Any] = (),
        where: str = "",
    ) -> None:
        self.layer = layer
        self.outputs = list(outputs)  # the layer's recorded calls (AgentOutput)
        self.partial: Any = None  # the run's trace up to and including this layer (MoAResult)
        self.needed = needed
        self.succeeded = succeeded
        self.planned = planned
        self.failures = list(failures)
        at = f"layer {layer}" + (f" ({where})" if where else "")
        lines = [f"{at} failed: {succeeded} of {planned} calls succeeded, min_success is {needed}; causes:"]
        lines += [f"  - {type(err).__name__}: {err}" for err in self.failures]
        super().__init__("\n".join(lines))


class _Partial(RunError):
    """A run that stopped early; ``partial`` holds its trace so far (a ``MoAResult``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.partial: Any = None


class BudgetExceeded(_Partial):
    """The run's budget would be passed: no new call started, calls in flight finished."""


class VerificationError(_Partial):
    """A ``verify`` stage ended with no answer passing its checks, repairs and fallbacks included.

    ``failures`` holds, for each answer checked (and each repair or fallback
    call that failed), in order, why it did not pass; ``partial`` is the trace
    with every verdict.
    """

    def __init__(self, layer: int, checked: int, failures: Sequence[str]) -> None:
        super().__init__(
            f"layer {layer} (verify): none of the {checked} answers checked passed"
            + "".join("\n" + _indent(why, "  ") for why in failures)
        )
        self.layer = layer
        self.failures = list(failures)
        self.considered: list[Any] = []  # every answer checked, with its verdicts (Candidate)


class ExecutionError(VerificationError):
    """An ``execute`` stage got no answer from any candidate's program (no code, an exception, a limit hit,
    no output); ``failures`` says why for each, ``partial`` has every run in its trace."""

    def __init__(self, layer: int, checked: int, failures: Sequence[str]) -> None:
        _Partial.__init__(
            self,
            f"layer {layer} (execute): none of the {checked} candidates' programs gave an answer"
            + "".join("\n" + _indent(why, "  ") for why in failures),
        )
        self.layer = layer
        self.failures = list(failures)
        self.considered = []


class CascadeError(_Partial):
    """A ``cascade`` stage ended without an answer: its last tier failed (or, cost-aware, every tier it ran did).

    ``decisions`` holds every escalation before it (``moa.Decision``), each with its score; ``partial`` is the
    trace, the calls of every tier that ran included.
    """

    def __init__(self, layer: int, problem: str, decisions: Sequence[Any] = ()) -> None:
        super().__init__(f"layer {layer} (cascade): {problem}")
        self.layer = layer
        self.decisions = list(decisions)


class RouteError(_Partial):
    """A ``route`` stage sent the prompt nowhere (no rule matched and there is no `default`; the router's
    answer named no route), or the route it chose failed.  ``decisions`` holds the router's choice, if any."""

    def __init__(self, layer: int, problem: str, decisions: Sequence[Any] = ()) -> None:
        super().__init__(f"layer {layer} (route): {problem}")
        self.layer = layer
        self.decisions = list(decisions)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


class StageError(_Partial):
    """A stage broke its contract: it raised an unexpected exception (a bug in a stage kind, often one
    of your own; chained as ``__cause__``) or passed on no candidate."""

    def __init__(self, layer: int, kind: str, problem: str) -> None:
        super().__init__(f"layer {layer} ({kind}): {problem}")
        self.layer = layer
        self.kind = kind


class DeadlineExceeded(_Partial):
    """The run's deadline passed: every call in flight was cancelled."""


class CallbackError(_Partial):
    """The caller's ``on_event`` or ``on_token`` callback raised: the run was stopped.

    Not a provider failure (nothing is retried or counted against a quorum):
    every call in flight is cancelled, and the callback's exception is chained
    (``__cause__``) and kept as ``.error``.
    """

    def __init__(self, callback: str, error: BaseException) -> None:
        super().__init__(f"the {callback} callback raised {type(error).__name__}: {error}; the run was stopped")
        self.callback = callback
        self.error = error
