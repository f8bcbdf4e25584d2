"""The checks of a ``verify`` stage: regex, JSON Schema, a Python function, a judge's yes/no."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from moa._prompt import Message
from moa.recipe import JsonSchemaCheck, LLMCheck, PythonCheck, RegexCheck
from moa.recipe.verification import resolve_function
from moa.result import AgentOutput, Verdict

from . import verdicts

_JSON_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
MESSAGE_CHARS = 300


def regex(check: RegexCheck, text: str) -> Verdict:
    found = re.search(check.pattern, text) is not None
    if found == check.must_match:
        return Verdict(check="regex", passed=True)
    why = "does not match" if check.must_match else "must not match, but matches"
    return Verdict(check="regex", passed=False, message=f"the answer {why} the pattern {check.pattern!r}")


def json_schema(check: JsonSchemaCheck, text: str) -> Verdict:
    import jsonschema

    document = _json_in(text)
    if document is None:
        return Verdict(check="json_schema", passed=False, message="the answer holds no JSON document")
    try:
        jsonschema.validate(document, check.json_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return Verdict(check="json_schema", passed=False, message=_cut(f"at /{where}: {exc.message}"))
    return Verdict(check="json_schema", passed=True)


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


async def python(check: PythonCheck, text: str, question: str) -> Verdict:
    """The user's function, called in a worker thread (it may block); whatever it raises is a failed check."""
    function = resolve_function(check.function)
    try:
        returned = await asyncio.to_thread(function, text, question)
    except Exception as exc:
        return Verdict(check="python", passed=False, message=_cut(f"{type(exc).__name__}: {exc}"))
    passed, message = returned if isinstance(returned, tuple) else (returned, "")
    return Verdict(check="python", passed=bool(passed), message=_cut(str(message)))


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


def llm(check: LLMCheck, output: AgentOutput) -> Verdict:
    p_yes = verdicts.probability(output, "yes", "no")
    if p_yes is None:
        reason = output.error.message if output.error else f"unreadable verdict {output.text!r}"
        return Verdict(check="llm", passed=False, message=_cut(f"the judge gave no verdict ({reason})"))
    passed = p_yes >= 0.5
    return Verdict(check="llm", passed=passed, message="" if passed else f"the judge says no: {check.criterion}")


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."
