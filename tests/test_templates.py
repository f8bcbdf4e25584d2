"""Templates are sandboxed, strict, and checked when loaded."""

from __future__ import annotations

import pytest

from moa import TemplateError
from moa._templates import compile_text, load


def test_builtin_aggregate_numbers_responses_one_per_line() -> None:
    block = load("aggregate").render(responses=["alpha", "beta\ngamma"], layer=2)
    assert block.endswith("\n1. alpha\n2. beta\ngamma")
    assert "some may be wrong" in block


@pytest.mark.parametrize(
    "probe",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ responses }}",
        "{{ responses.__class__.__init__.__globals__ }}",
        "{% for r in responses %}{{ r.__class__.__base__ }}{% endfor %}",
        "{{ responses.append('x') }}",
    ],
)
def test_sandbox_blocks_python_internals_at_load(probe: str) -> None:
    with pytest.raises(TemplateError, match=r"unsafe|failed to render"):
        compile_text(probe if "responses" in probe else probe + "{{ responses }}", "<probe>")


def test_unknown_variables_and_syntax_errors_fail_at_compile() -> None:
    with pytest.raises(TemplateError, match=r"unknown variable\(s\) answers"):
        compile_text("{{ answers }}{{ responses }}", "<t>")
    with pytest.raises(TemplateError, match="line 1"):
        compile_text("{% for r in responses %}", "<t>")
    with pytest.raises(TemplateError, match="never uses `responses`"):
        compile_text("Just a fixed instruction.", "<t>")


def test_strict_undefined_attribute_fails_clearly_at_load() -> None:
    with pytest.raises(TemplateError, match="failed to render"):
        compile_text("{{ responses.missing }}", "<t>")
