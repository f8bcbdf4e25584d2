"""Prompt templates: Jinja2, sandboxed, strict, bounded, compiled and checked at load time.

A template turns the previous layer's outputs into the block injected into an
aggregating agent's system message.  It is compiled and its variables checked
when the recipe loads, so a typo fails before any paid call.  Jinja errors, and
every other exception a template raises, are translated into ``TemplateError``
here and nowhere else.

Templates come from recipe files, so a typo such as ``'-' * 3000000000`` must
fail with a message, not take the machine's memory.  Rendering is bounded:

* the output may hold at most ``output_cap(responses)`` characters:
  ``MAX_OUTPUT_CHARS`` plus ``OUTPUT_CHARS_PER_RESPONSE_CHAR`` per character
  of the responses, so long real answers still fit;
* no single value (a string, a list as printed, a block's output) may be
  larger than that cap, and all the values a render makes (by operators,
  filters, method calls, slices, ``~`` and blocks) may add up to at most
  ``WORK_MULTIPLE`` times it;
* ``range()`` gives at most ``MAX_RANGE`` items, and integers at most
  ``MAX_INT_DIGITS`` digits;
* ``include``, ``import``, ``from`` and ``extends`` are refused: a template
  cannot load other files.

Sizes are estimated *before* an operation runs (``*``, ``**``, ``%``, ``+``,
``~``, ``str.format`` widths, filters and methods whose arguments multiply
their output), and what was actually made is counted after.  A template that
only burns CPU (deeply nested empty loops) is not bounded; the trial render
when the recipe loads would hang there, before any paid call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes

from moa._errors import TemplateError
from moa._resources import builtin_names, data_dir

from .sandbox import _ENV
from .sizes import (
    _ACTIVE,
    MAX_INT_DIGITS,
    MAX_OUTPUT_CHARS,
    MAX_RANGE,
    OUTPUT_CHARS_PER_RESPONSE_CHAR,
    WORK_MULTIPLE,
    _Budget,
    _metered,
    _TooLarge,
    output_cap,
)

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_OUTPUT_CHARS",
    "MAX_RANGE",
    "OUTPUT_CHARS_PER_RESPONSE_CHAR",
    "TEMPLATE_SUFFIX",
    "VARIABLES",
    "WORK_MULTIPLE",
    "CompiledTemplate",
    "compile_text",
    "is_file_reference",
    "load",
    "output_cap",
    "resolve_reference",
]

#: Variables a template may use, and what they hold.
VARIABLES = {
    "responses": "list of the previous layer's successful outputs, in agent order",
    "layer": "1-based index of the layer being prompted",
    "step": "1-based step of an `aggregate_seq` layer (0 in other layers)",
}
TEMPLATE_SUFFIX = ".j2"

#: Tags that would load another template; templates have no loader, and must not read files.
_LOADING_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from",
}


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception came from: Jinja rewrites tracebacks to point at it."""
    line = getattr(exc, "lineno", None) if isinstance(exc, jinja2.TemplateSyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _explain(exc: Exception) -> str:
    """What went wrong in a render, for a message that starts with the template's name."""
    line = _template_line(exc)
    where = f" at line {line}" if line else ""
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"tried something unsafe{where}: {exc}"
    detail = str(exc) if isinstance(exc, jinja2.TemplateError | _TooLarge) else f"{type(exc).__name__}: {exc}"
    return f"failed to render{where}: {detail}"


@dataclass(frozen=True)
class CompiledTemplate:
    """A checked template, ready to render."""

    source: str  # the file it came from
    template: jinja2.Template
    text: str = ""  # what was compiled

    def __reduce__(self) -> tuple[Any, ...]:
        # A compiled Jinja template does not pickle; its text does (a recipe sent to a Ray worker).
        return compile_text, (self.text, self.source)

    def render(self, *, responses: list[str], layer: int, step: int = 0) -> str:
        try:
            return self._render(responses, layer, step)
        except Exception as exc:
            raise TemplateError(f"template {self.source} {_explain(exc)}") from exc

    def check(self, response_counts: Iterable[int], steps: Iterable[int] = (0,), layer: int = 2) -> None:
        """Trial-render with each number of stand-in responses a layer can really receive, at each step.

        The load-time trial uses two responses, so ``{{ responses[1] }}`` passes it and would fail mid-run
        when a quorum leaves one; the recipe calls this with the counts its layers allow.
        """
        steps = tuple(steps)
        for count in response_counts:
            responses = [f"<answer {i}>" for i in range(1, count + 1)]
            for step in steps:
                try:
                    self._render(responses, layer, step)
                except Exception as exc:
                    at_step = f" at step {step}" if step else ""
                    raise TemplateError(
                        f"template {self.source} fails when it receives {count} response(s){at_step}: {_explain(exc)}"
                    ) from exc

    def _render(self, responses: list[str], layer: int, step: int) -> str:
        # Template.generate, with the output counted as it streams out: a loop stops at the cap.
        budget = _Budget(output_cap(responses))
        token = _ACTIVE.set(budget)
        template = self.template
        pieces: list[str] = []
        append, total, limit = pieces.append, 0, budget.limit
        try:
            context = template.new_context({"responses": responses, "layer": layer, "step": step})
            for piece in template.root_render_func(context):
                total += len(piece)
                if total > limit:
                    raise _TooLarge(f"its output would pass the cap of {limit:,} characters")
                append(piece)
        except Exception:
            template.environment.handle_exception()  # re-raises, its traceback pointing at template lines
        finally:
            _ACTIVE.reset(token)
        return "".join(pieces).strip()


def is_file_reference(value: str) -> bool:
    """Whether a template reference names a file rather than a built-in template."""
    return "/" in value or "\\" in value or Path(value).suffix != ""


def resolve_reference(value: str, base_dir: str | Path | None) -> str:
    """Make a file reference absolute (relative to the recipe's folder); keep built-in names."""
    if not is_file_reference(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return str(path.resolve())


def load(reference: str) -> CompiledTemplate:
    """Find, compile and check a template by built-in name or absolute path."""
    if is_file_reference(reference):
        path = Path(reference)
    else:
        path = data_dir("prompts") / f"{reference}{TEMPLATE_SUFFIX}"
        if not path.is_file():
            known = ", ".join(builtin_names("prompts", TEMPLATE_SUFFIX))
            raise TemplateError(f"no built-in template named {reference!r} (built-in: {known})")
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist")
    stat = path.stat()
    return _compile(str(path), stat.st_mtime_ns, stat.st_size)


@contextmanager
def _compile_errors(source: str) -> Iterator[None]:
    """Turn whatever Jinja raises while parsing or compiling into ``TemplateError``."""
    try:
        yield
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:  # includes an unknown filter or test
        raise TemplateError(f"template {source}, line {exc.lineno}: {exc.message}") from exc
    except Exception as exc:  # e.g. RecursionError for absurd nesting, ValueError for a 5,000-digit number
        raise TemplateError(f"template {source} could not be compiled: {type(exc).__name__}: {exc}") from exc


def compile_text(text: str, source: str) -> CompiledTemplate:
    """Compile and check template text (``source`` names it in errors)."""
    # Jinja folds constant expressions while compiling: that work is bounded like a render's.
    with _compile_errors(source), _metered(_Budget(MAX_OUTPUT_CHARS)):
        parsed = _ENV.parse(text)
        loading = next(parsed.find_all(tuple(_LOADING_TAGS)), None)
        if loading is not None:
            raise TemplateError(
                f"template {source}, line {loading.lineno}: templates cannot load other files "
                f"({{% {_LOADING_TAGS[type(loading)]} %}} is not allowed)"
            )
        used = meta.find_undeclared_variables(parsed)
        unknown = sorted(used - VARIABLES.keys())
        if unknown:
            allowed = ", ".join(sorted(VARIABLES))
            raise TemplateError(
                f"template {source} uses unknown variable(s) {', '.join(unknown)}; available: {allowed}"
            )
        if "responses" not in used:
            raise TemplateError(
                f"template {source} never uses `responses`, so the previous layer's outputs would not reach the model"
            )
        compiled = CompiledTemplate(source=source, template=_ENV.from_string(parsed), text=text)
    # A trial render with stand-in answers: sandbox violations, bad attribute access and oversized
    # output fail now, at load time, not in the middle of a paid run.
    compiled.render(responses=["<answer 1>", "<answer 2>"], layer=2, step=1)
    return compiled


@lru_cache(maxsize=64)
def _compile(path: str, _mtime_ns: int, _size: int) -> CompiledTemplate:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from exc
    return compile_text(text, path)
