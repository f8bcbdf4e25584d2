"""The bounded sandbox: Jinja's immutable sandbox, with every operation sized before it runs.

Built on ``sizes``: operators and calls are checked by the environment's
hooks, ``~``, slices and block output by a small code-generator subclass, and
the output is counted as it streams.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Iterable
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup

from .sizes import (
    _CONTAINERS,
    _MADE,
    _MAX_INT_BITS,
    _SCALARS,
    _SELF_COUNTED,
    MAX_INT_DIGITS,
    _arg,
    _bounded_filter,
    _bounded_range,
    _BoundedEscapeFormatter,
    _BoundedFormatter,
    _budget,
    _chars,
    _count,
    _method_size,
    _printf_size,
    _TooLarge,
)


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
