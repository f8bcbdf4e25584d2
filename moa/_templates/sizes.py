"""Sizes: how big a template's values and output may grow, estimated before each operation runs.

Every operator, call and filter that can multiply its input (``*``, ``**``,
``%``, ``str.format`` widths, ``center``, ``indent``, ``wordwrap``...) has its
result size estimated here first; ``_Budget`` counts what one render has made.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace
from markupsafe import Markup

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
            if part != "*":
                total += int(part or 0)
            elif isinstance(star := take(), int):
                total += abs(star)  # a negative `*` width left-justifies: it pads as far as its absolute value
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
