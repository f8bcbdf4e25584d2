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

import functools
import math
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import BlockReference, Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup

from moa._errors import TemplateError
from moa._resources import builtin_names, data_dir

#: Variables a template may use, and what they hold.
VARIABLES = {
    "responses": "list of the previous layer's successful outputs, in agent order",
    "layer": "1-based index of the layer being prompted",
    "step": "1-based step of an `aggregate_seq` layer (0 in other layers)",
}
TEMPLATE_SUFFIX = ".j2"

#: Characters a rendered template may hold, before the allowance for the responses themselves.
MAX_OUTPUT_CHARS = 1_000_000
#: Extra output characters allowed per character of the responses (a template may quote each twice).
OUTPUT_CHARS_PER_RESPONSE_CHAR = 2
#: All the values one render makes may add up to this many times the output cap.
WORK_MULTIPLE = 4
#: Items a template's ``range()`` may produce (Jinja's own sandbox allows 100,000).
MAX_RANGE = 10_000
#: Digits an integer may have: Python will not print a longer one anyway.
MAX_INT_DIGITS = 4300

_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
_MAX_NESTING = 32  # containers nested deeper than this count as too large (a namespace can hold itself)
_CONTAINERS: tuple[type, ...] = (
    list,
    tuple,
    dict,
    set,
    frozenset,
    Namespace,
    type({}.keys()),
    type({}.values()),
    type({}.items()),
)
_SCALARS = frozenset({str, int, float, bool, type(None), Markup})  # printed as they are: a fast path
_MADE = (str, bytes, list, tuple, dict)  # results whose size is counted after an operation
_SELF_COUNTED = (Macro, LoopContext, BlockReference)  # callables whose output was counted as it was written


def output_cap(responses: Sequence[str]) -> int:
    """The most characters a template may render, and the largest value it may make, for these responses."""
    return MAX_OUTPUT_CHARS + OUTPUT_CHARS_PER_RESPONSE_CHAR * sum(map(len, responses))


class _TooLarge(Exception):
    """A render made, or was about to make, more than one of the caps allows."""


class _Budget:
    """What one render (or one compilation) may still make."""

    __slots__ = ("left", "limit", "work")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.work = WORK_MULTIPLE * limit
        self.left = self.work

    def check(self, size: int, what: str) -> None:
        """Refuse an operation expected to make ``size`` characters, before it runs."""
        if size > self.limit:
            raise _TooLarge(f"{what} would make {size:,} characters; the cap is {self.limit:,}")
        if size > self.left:
            raise _TooLarge(f"{what} would take the characters made by this render past {self.work:,}")

    def charge(self, size: int, what: str) -> None:
        """Count what an operation made."""
        self.check(size, what)
        self.left -= size


_ACTIVE: ContextVar[_Budget | None] = ContextVar("moa_template_budget", default=None)


def _budget() -> _Budget:
    # Outside a render (Jinja folds constants while compiling) each operation gets a fresh default budget.
    return _ACTIVE.get() or _Budget(MAX_OUTPUT_CHARS)


@contextmanager
def _metered(budget: _Budget) -> Iterator[None]:
    token = _ACTIVE.set(budget)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _chars(value: object, stop: int, depth: int = 0) -> int:
    """About how many characters ``str(value)`` makes; counting stops once past ``stop``."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return abs(value).bit_length() * 30103 // 100000 + 2
    if not isinstance(value, _CONTAINERS):
        return 16  # numbers, ranges, generators, macros, undefined: short or not printable
    if depth >= _MAX_NESTING:
        return stop + 1
    items = cast("Iterable[object]", value)
    if isinstance(value, Namespace):
        items = getattr(value, "_Namespace__attrs", {}).items()
    elif isinstance(value, dict):
        items = value.items()
    total = 2
    for item in items:
        total += _chars(item, stop, depth + 1) + 4
        if total > stop:
            break
    return total


def _layout(value: object, depth: int = 1) -> tuple[int, int]:
    """(items, nesting) of a JSON-like value: what an indented dump repeats its indent for."""
    if not isinstance(value, list | tuple | dict) or depth > _MAX_NESTING:
        return 1, 0
    items, deepest = 1, 0
    for item in value.values() if isinstance(value, dict) else value:
        count, nesting = _layout(item, depth + 1)
        items += count
        deepest = max(deepest, nesting)
    return items, deepest + 1


def _arg(values: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    """An argument given by position or name (``values[0]`` is the filter's value or the method's first)."""
    return values[index] if len(values) > index else kwargs.get(name, default)


def _count(value: object) -> int:
    """An int argument as a size (anything else counts as zero: Python will reject it itself)."""
    return max(value, 0) if isinstance(value, int) else 0


def _text_len(value: object, limit: int) -> int:
    return len(value) if isinstance(value, str) else _chars(value, limit)


_PRINTF_SPEC = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)


def _printf_size(template: str | bytes, args: object, limit: int) -> int:
    """Characters ``template % args`` makes at most: widths and precisions count in full."""
    text = template if isinstance(template, str) else template.decode("latin-1")
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, Mapping) else None
    index = 0

    def take() -> object:
        nonlocal index
        index += 1
        return positional[index - 1] if index <= len(positional) else None

    total = len(text)
    for match in _PRINTF_SPEC.finditer(text):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        for part in (width, precision):
            total += _count(take()) if part == "*" else int(part or 0)
        value = mapping.get(key[1:-1]) if key and mapping is not None else take()
        total += _chars(value, limit)
    return total


def _spec_width(spec: str) -> int:
    """Characters a ``str.format`` spec may pad to: its width and precision, counted in full."""
    return sum(int(digits) for digits in re.findall(r"\d+", spec))


def _replace_bound(length: int, old: int, new: int, count: object) -> int:
    """Characters replacing an ``old``-long text by a ``new``-long one in a ``length``-long one makes at most."""
    found = length // old if old else length + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return length + found * new


def _method_size(owner: str | bytes, name: str, values: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """Characters a str or bytes method makes at most, where its arguments can multiply its output."""
    length = len(owner)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(length, _count(_arg(values, kwargs, 0, "width", 0)))
    if name == "expandtabs":
        tab: str | bytes = "\t" if isinstance(owner, str) else b"\t"
        return length + owner.count(tab) * _count(_arg(values, kwargs, 0, "tabsize", 8))  # type: ignore[arg-type]
    if name == "replace":
        old, new = _arg(values, kwargs, 0, "old", ""), _arg(values, kwargs, 1, "new", "")
        if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
            return None
        return _replace_bound(length, len(old), len(new), _arg(values, kwargs, 2, "count", -1))
    if name == "translate":
        table = _arg(values, kwargs, 0, "table", None)
        if isinstance(table, Mapping):
            widest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
            return length * max(widest, 1)
    return None


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` for templates: a field's width and precision count before it is padded."""

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            budget = _budget()
            budget.check(_chars(value, budget.limit), "`.format()`")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = _budget()
        budget.check(_chars(value, budget.limit) + _spec_width(format_spec), "`.format()`")
        result = super().format_field(value, format_spec)
        budget.charge(len(result), "`.format()`")
        return result


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    """The same, for ``Markup.format``."""


FilterSize = Callable[[list[Any], dict[str, Any], int], int]


def _join_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    if not isinstance(values[0], list | tuple):
        values[0] = list(values[0])  # a generator can be read once: read it here, join the list
    separator = _arg(values, kwargs, 1, "d", "")
    return sum(_chars(item, limit) for item in values[0]) + _chars(separator, limit) * len(values[0])


def _indent_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    width = _arg(values, kwargs, 1, "width", 4)
    step = len(width) if isinstance(width, str) else _count(width)
    lines = values[0].count("\n") + 1 if isinstance(values[0], str) else _chars(values[0], limit)
    return _text_len(values[0], limit) + lines * step


def _wordwrap_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    wrapstring = _arg(values, kwargs, 3, "wrapstring", None)
    length = _text_len(values[0], limit)
    return length + (length + 1) * (len(wrapstring) if isinstance(wrapstring, str) else 2)


def _replace_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    old, new = (_text_len(_arg(values, kwargs, i, name, ""), limit) for i, name in ((1, "old"), (2, "new")))
    return _replace_bound(_text_len(values[0], limit), old, new, _arg(values, kwargs, 3, "count", None))


def _format_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    template = values[0]
    if not isinstance(template, str):
        if _chars(template, limit) > limit:
            return limit + 1
        template = str(template)
    return _printf_size(template, kwargs or tuple(values[1:]), limit)


def _urlize_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    text = values[0] if isinstance(values[0], str) else ""
    extra = sum(_chars(_arg(values, kwargs, i, name, ""), limit) for i, name in ((4, "rel"), (3, "target")))
    return 2 * _text_len(values[0], limit) + len(text.split()) * (60 + extra)


def _tojson_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    indent = _arg(values, kwargs, 1, "indent", None)
    step = len(indent) if isinstance(indent, str) else _count(indent)
    items, nesting = _layout(values[0]) if step else (0, 0)
    return 6 * _chars(values[0], limit) + items * (nesting * step + 1)


def _pprint_size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
    items, nesting = _layout(values[0])
    return _chars(values[0], limit) + items * (nesting + 1)


def _filler_size(count_name: str) -> FilterSize:
    def size(values: list[Any], kwargs: dict[str, Any], limit: int) -> int:
        count = _count(_arg(values, kwargs, 1, count_name, 0))
        return 2 * _chars(values[0], limit) + count * (_chars(_arg(values, kwargs, 2, "fill_with", None), limit) + 4)

    return size


#: Filters whose arguments can multiply their output: the most each can make (values[0] is the filtered value).
_FILTER_SIZES: dict[str, FilterSize] = {
    "center": lambda v, kw, limit: max(_text_len(v[0], limit), _count(_arg(v, kw, 1, "width", 80))),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "format": _format_size,
    "replace": _replace_size,
    "join": _join_size,
    "batch": _filler_size("linecount"),
    "slice": _filler_size("slices"),
    "urlize": _urlize_size,
    "tojson": _tojson_size,
    "pprint": _pprint_size,
}


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: refuse arguments that would make too much, count what it made."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment comes first
    estimate = _FILTER_SIZES.get(name)
    what = f"filter `{name}`"

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if estimate is not None and len(args) > skip:
            values = list(args[skip:])
            budget.check(estimate(values, kwargs, budget.limit), what)
            args = (*args[:skip], *values)
        elif len(args) > skip and type(args[skip]) is not str:
            budget.check(_chars(args[skip], budget.limit), what)  # filters print lists and numbers
        result = func(*args, **kwargs)
        if isinstance(result, _MADE):
            budget.charge(_chars(result, budget.limit), what)
        return result

    return bounded


def _bounded_range(*args: int) -> range:
    """``range()`` for templates: at most ``MAX_RANGE`` items."""
    numbers = range(*args)
    try:
        too_long = len(numbers) > MAX_RANGE
    except OverflowError:
        too_long = True
    if too_long:
        raise _TooLarge(f"range({', '.join(map(repr, args))}) would give more than {MAX_RANGE:,} items")
    return numbers


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}``: a list or mapping is measured before it is printed."""
    if type(value) not in _SCALARS and isinstance(value, _CONTAINERS):
        budget = _budget()
        budget.check(_chars(value, budget.limit), "printing a value")
    return value


class _Buffer(list[str]):
    """The output of a macro, call, filter or set block, collected before it is joined: counted as it grows."""

    __slots__ = ("_budget",)

    def __init__(self) -> None:
        super().__init__()
        self._budget = _budget()

    def append(self, piece: str) -> None:
        self._budget.charge(len(piece) + 1, "a block's output")
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        pieces = tuple(pieces)
        self._budget.charge(sum(map(len, pieces)) + len(pieces), "a block's output")
        super().extend(pieces)


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the three ways around the sandbox's hooks routed through them.

    Block buffers become ``_Buffer``, ``~`` goes through ``environment.join_operands`` and slices
    through ``environment.getitem``.
    """

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.join_operands({join}, (")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.getitem(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
            self.write(", ")
        self.write("))")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every way a template can make a large value measured first."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}

    def new_buffer(self) -> _Buffer:
        return _Buffer()

    def concat(self, pieces: Iterable[str]) -> str:
        """Join a block's output (Jinja joins every buffer and block through this)."""
        budget = _budget()
        if isinstance(pieces, list):
            budget.charge(sum(map(len, pieces)), "a block's output")
            return "".join(pieces)
        collected, total = [], 0
        for piece in pieces:
            total += len(piece)
            budget.check(total, "a block's output")
            collected.append(piece)
        budget.charge(total, "a block's output")
        return "".join(collected)

    def join_operands(self, join: Callable[[Iterable[Any]], str], operands: tuple[Any, ...]) -> str:
        """``a ~ b``."""
        budget = _budget()
        budget.check(sum(_chars(operand, budget.limit) for operand in operands), "`~`")
        result = join(operands)
        budget.charge(len(result), "`~`")
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        what = f"`{operator}`"
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length(), what)
            elif isinstance(right, int) and isinstance(left, str | bytes | list | tuple):
                budget.check(_chars(left, budget.limit) * right, what)
            elif isinstance(left, int) and isinstance(right, str | bytes | list | tuple):
                budget.check(_chars(right, budget.limit) * left, what)
        elif operator == "%":
            if isinstance(left, str | bytes):
                budget.check(_printf_size(left, right, budget.limit), what)
        elif isinstance(left, str | bytes | list | tuple):
            budget.check(_chars(left, budget.limit) + _chars(right, budget.limit), what)
        result = self.binop_table[operator](left, right)
        if isinstance(result, _MADE):
            budget.charge(_chars(result, budget.limit), what)
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(argument) is slice and isinstance(obj, str | bytes | list | tuple):
            try:
                count = len(range(*argument.indices(len(obj))))
            except (TypeError, ValueError):
                count = 0  # not a valid slice: indexing below says why
            _budget().charge(count, "a slice")
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map`` with ``_BoundedFormatter``; otherwise as Jinja's own."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: SandboxedFormatter
        if isinstance(owner, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"
        str_type = type(owner)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "?")
        what = f"`.{name}()`"
        if isinstance(owner, str | bytes):
            if name in ("format", "format_map") and isinstance(owner, str):
                obj = self.wrap_str_format(obj) or obj
            elif name == "join" and len(args) == 1 and not kwargs:
                items = list(args[0])
                args = (items,)
                budget.check(sum(_chars(item, budget.limit) for item in items) + len(owner) * len(items), what)
            else:
                size = _method_size(owner, name, args, kwargs)
                if size is not None:
                    budget.check(size, what)
        elif isinstance(owner, int) and name == "to_bytes":
            budget.check(_count(_arg(args, kwargs, 0, "length", 1)), what)
        elif obj is generate_lorem_ipsum:
            paragraphs = _count(_arg(args, kwargs, 0, "n", 5))
            words = max(_count(_arg(args, kwargs, 2, "min", 20)), _count(_arg(args, kwargs, 3, "max", 100)))
            budget.check(paragraphs * (words * 12 + 20), "`lipsum()`")
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, _MADE) and not isinstance(obj, _SELF_COUNTED):
            budget.charge(_chars(result, budget.limit), what)
        return result


def _check_bits(bits: float, what: str) -> None:
    if bits > _MAX_INT_BITS:
        raise _TooLarge(
            f"{what} would make a number of about {int(bits * 0.30103):,} digits; the cap is {MAX_INT_DIGITS:,}"
        )


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _check_bits(exponent if exponent > _MAX_INT_BITS else exponent * math.log2(abs(base)), "`**`")


_ENV = _BoundedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)

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
        compiled = CompiledTemplate(source=source, template=_ENV.from_string(parsed))
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
