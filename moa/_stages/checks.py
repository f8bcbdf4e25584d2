"""The checks of a ``verify`` stage: regex, JSON Schema, a Python function, a judge's yes/no, agreement.

Every verdict's message is cut to ``MESSAGE_CHARS`` and scrubbed of secrets: it goes into the
trace, the error, and the repair prompt sent to a model.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from typing import Any

from moa._prompt import Message
from moa._secrets import redact
from moa.recipe import AgreeCheck, JsonSchemaCheck, LLMCheck, PythonCheck, RegexCheck
from moa.recipe.verification import resolve_function
from moa.result import AgentOutput, Candidate, Verdict

from . import verdicts
from .extract import extract, ran_without_answer

_JSON_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
MESSAGE_CHARS = 300
#: What a failed judge call says: the check could not run (not evidence against the answer).
UNAVAILABLE = "the judge could not be asked"


def verdict(check: str, passed: bool, message: str = "", layer: int = 0) -> Verdict:
    """A verdict whose message is cut and carries no secret."""
    text = redact(message)
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 3] + "..."
    return Verdict(check=check, passed=passed, message=text, layer=layer)


def regex(check: RegexCheck, text: str, layer: int) -> Verdict:
    found = re.search(check.pattern, text) is not None
    if found == check.must_match:
        return verdict("regex", True, layer=layer)
    why = "does not match" if check.must_match else "must not match, but matches"
    return verdict("regex", False, f"the answer {why} the pattern {check.pattern!r}", layer)


def json_schema(check: JsonSchemaCheck, text: str, layer: int) -> Verdict:
    import jsonschema
    import referencing
    import referencing.exceptions

    document = _json_in(text)
    if document is None:
        return verdict("json_schema", False, "the answer holds no JSON document", layer)
    try:
        validator = jsonschema.validators.validator_for(check.json_schema)
        validator(check.json_schema, registry=referencing.Registry()).validate(document)  # never fetches a $ref
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return verdict("json_schema", False, f"at /{where}: {exc.message}", layer)
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError) as exc:
        return verdict("json_schema", False, f"the schema cannot be used: {type(exc).__name__}: {exc}", layer)
    return verdict("json_schema", True, layer=layer)


def _json_in(text: str) -> Any:
    """The JSON document an answer holds: the whole text, a fenced block, or its first object or array."""
    candidates = [text.strip(), *(m.strip() for m in _JSON_BLOCK.findall(text))]
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start >= 0:
        candidates.append(text[start:])
    for candidate in candidates:
        try:
            return json.JSONDecoder().raw_decode(candidate)[0]
        except ValueError:
            continue
    return None


async def python(check: PythonCheck, text: str, question: str, layer: int) -> Verdict:
    """The user's function: a coroutine function is awaited, any other runs in a worker thread (it may
    block).  It must return a bool or ``(bool, message)``; anything else, or an exception, fails the check."""
    function = resolve_function(check.function)
    try:
        if inspect.iscoroutinefunction(function):
            returned = await function(text, question)
        else:
            returned = await asyncio.to_thread(function, text, question)
    except Exception as exc:
        return verdict("python", False, f"{check.function} raised {type(exc).__name__}: {exc}", layer)
    if isinstance(returned, bool):
        return verdict("python", returned, "" if returned else f"{check.function} returned False", layer)
    if (
        isinstance(returned, tuple)
        and len(returned) == 2
        and isinstance(returned[0], bool)
        and isinstance(returned[1], str)
    ):
        return verdict("python", returned[0], returned[1], layer)
    shown = repr(returned)[:80]
    return verdict("python", False, f"{check.function} returned {shown}: expected a bool or (bool, message)", layer)


def llm_messages(check: LLMCheck, question: str, text: str) -> list[Message]:
    return [
        {
            "role": "system",
            "content": "You check whether a response meets a criterion. Reply with one word: yes or no.",
        },
        {
            "role": "user",
            "content": f"Question:\n{question}\n\nResponse:\n{text}\n\nCriterion: {check.criterion}\n\n"
            "Does the response meet the criterion? Answer yes or no.",
        },
    ]


def llm(check: LLMCheck, output: AgentOutput, layer: int) -> Verdict:
    if not output.ok:
        reason = f"{output.error.type}: {output.error.message}" if output.error else "no answer"
        return verdict("llm", False, f"{UNAVAILABLE} ({reason})", layer)
    p_yes = verdicts.probability(output, "yes", "no")
    if p_yes is None:
        return verdict("llm", False, f"the judge gave no verdict (it said {output.text!r})", layer)
    passed = p_yes >= 0.5
    return verdict("llm", passed, "" if passed else f"the judge says no: {check.criterion}", layer)


def judge_unavailable(found: Verdict) -> bool:
    return found.check == "llm" and not found.passed and found.message.startswith(UNAVAILABLE)


def answer_of(check: AgreeCheck, candidate: Candidate, question: str) -> str | None:
    """The answer a candidate gives, as ``check`` compares answers (an earlier stage's answer when it has
    one); None for an answer cut by ``max_tokens``."""
    if candidate.finish_reason == "length" or ran_without_answer(candidate):
        return None
    text = candidate.answer if candidate.answer is not None else candidate.text
    return extract(text, check.extract, question, check.pattern)


def source(check: AgreeCheck, candidate: Candidate) -> tuple[int, ...]:
    """What makes a candidate independent of another: its writer (layer and agent), or itself."""
    site = (candidate.layer, candidate.agent)
    return site if check.independent == "agents" else (*site, candidate.sample, candidate.step)


def agree(
    check: AgreeCheck, candidate: Candidate, pool: list[Candidate], question: str, layer: int
) -> tuple[Verdict, int | None]:
    """Whether at least ``check.k`` independent candidates of ``pool`` give ``candidate``'s answer; and how many."""
    mine = answer_of(check, candidate, question)
    if mine is None:
        return verdict("agree", False, "no answer could be read from it", layer), None
    by_answer: dict[str, set[tuple[int, ...]]] = {}
    for other in pool:
        answer = answer_of(check, other, question)
        if answer is not None:
            by_answer.setdefault(answer, set()).add(source(check, other))
    by_answer.setdefault(mine, set()).add(source(check, candidate))
    count = len(by_answer[mine])
    if count >= check.k:
        return verdict("agree", True, layer=layer), count
    others = ", ".join(f"{_shown(a)} x{len(s)}" for a, s in sorted(by_answer.items(), key=lambda kv: -len(kv[1])))
    unit = "agent" if check.independent == "agents" else "candidate"
    message = f"{count} independent {unit}(s) gave {_shown(mine)}, {check.k} needed (answers: {others})"
    return verdict("agree", False, message, layer), count


def _shown(answer: str) -> str:
    return repr(answer if len(answer) <= 24 else answer[:21] + "...")
