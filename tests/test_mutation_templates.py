"""Templates, exactly: what a render receives and says when it fails, and the sizes the sandbox refuses.

Written against the mutants of ``moa/_templates`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any

import jinja2
import pytest

from moa import TemplateError
from moa._templates import CompiledTemplate, _explain, compile_text, is_file_reference, load
from moa._templates.sandbox import _BoundedEnvironment
from moa._templates.sizes import _filler_size, _TooLarge

# --- what a render receives ----------------------------------------------------------------------------------


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], int, int]]:
    """Every (responses, layer, step) a template is rendered with while the test runs."""
    seen: list[tuple[list[str], int, int]] = []
    render = CompiledTemplate._render

    def spy(self: CompiledTemplate, responses: list[str], layer: int, step: int) -> str:
        seen.append((list(responses), layer, step))
        return render(self, responses, layer, step)

    monkeypatch.setattr(CompiledTemplate, "_render", spy)
    return seen


def test_the_load_time_trial_renders_two_stand_ins_at_layer_2_step_1(renders: list[Any]) -> None:
    compiled = compile_text("{{ responses | join(',') }}", "<t>")
    assert renders == [(["<answer 1>", "<answer 2>"], 2, 1)]
    compiled.check([1, 3])
    assert renders[1:] == [(["<answer 1>"], 2, 0), (["<answer 1>", "<answer 2>", "<answer 3>"], 2, 0)]


def test_a_render_sees_its_layer_and_step_zero_unless_given() -> None:
    compiled = compile_text("{{ layer }}/{{ step }}:{{ responses[0] }}", "<t>")
    assert compiled.render(responses=["a"], layer=3) == "3/0:a"
    assert compiled.render(responses=["a"], layer=3, step=2) == "3/2:a"


# --- what a failure says -------------------------------------------------------------------------------------


def test_an_error_in_python_names_its_type_and_the_template_line() -> None:
    with pytest.raises(TemplateError) as info:
        compile_text("first\n{{ responses | length // 0 }}", "<t>")
    assert (
        str(info.value)
        == "template <t> failed to render at line 2: ZeroDivisionError: integer division or modulo by zero"
    )


def test_output_past_the_cap_is_refused_without_a_line() -> None:
    with pytest.raises(TemplateError) as info:
        compile_text("{% for i in range(10000) %}{{ responses[0] }}{{ 'x' * 200 }}{% endfor %}", "<t>")
    assert str(info.value) == "template <t> failed to render: its output would pass the cap of 1,000,040 characters"


def test_unknown_variables_are_listed_with_the_ones_available() -> None:
    with pytest.raises(TemplateError) as info:
        compile_text("{{ answers }}{{ model }}{{ responses }}", "<t>")
    assert str(info.value) == "template <t> uses unknown variable(s) answers, model; available: layer, responses, step"


def test_an_unknown_built_in_template_lists_the_built_in_ones() -> None:
    with pytest.raises(TemplateError) as info:
        load("nope")
    assert str(info.value) == "no built-in template named 'nope' (built-in: aggregate, aggregate_seq, debate)"


@pytest.mark.parametrize(
    ("value", "is_file"),
    [("dir/name", True), ("dir\\name", True), ("name.j2", True), ("aggregate", False)],
)
def test_a_reference_is_a_file_when_it_has_a_folder_or_a_suffix(value: str, is_file: bool) -> None:
    assert is_file_reference(value) is is_file


def test_a_template_file_changed_on_disk_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "t.j2"
    path.write_text("A{{ responses[0] }}")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert load(str(path)).render(responses=["x"], layer=2) == "Ax"
    path.write_text("B{{ responses[0] }}")  # the same size, a new time
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert load(str(path)).render(responses=["x"], layer=2) == "Bx"
    path.write_text("CC{{ responses[0] }}")  # a new size, the same time
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert load(str(path)).render(responses=["x"], layer=2) == "CCx"


# --- sizes: the estimate a refusal names -----------------------------------------------------------------------

#: The cap of the load-time trial render: 1,000,000 + 2 characters per character of its two 10-character stand-ins.
CAP = "the cap is 1,000,040"


def refusal(text: str) -> str:
    """What compiling (and trial-rendering) ``text`` says, after the template's name and line."""
    with pytest.raises(TemplateError) as info:
        compile_text("{{ responses|length }}" + text, "<t>")
    prefix = "template <t> failed to render at line 1: "
    assert str(info.value).startswith(prefix)
    return str(info.value).removeprefix(prefix)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Filters, sized from their arguments before they run.
        ("{{ 'x'|center(2000000) }}", "filter `center` would make 2,000,000 characters"),
        ("{{ ('a' ~ '\\n' ~ 'b')|indent(600000) }}", "filter `indent` would make 1,200,003 characters"),
        ("{{ ('a' ~ '\\n' ~ 'b')|indent(width='-' * 600000) }}", "filter `indent` would make 1,200,003 characters"),
        ("{{ [1, 2]|indent(600000) }}", "filter `indent` would make 8,400,014 characters"),  # 14 printed, 14 lines
        ("{{ ('x' * 1000)|wordwrap(5, wrapstring='-' * 1000) }}", "filter `wordwrap` would make 1,002,000 characters"),
        ("{{ ('x' * 1000)|wordwrap(5, true, '-' * 1000) }}", "filter `wordwrap` would make 1,002,000 characters"),
        ("{{ ('x' * 400000)|wordwrap(5) }}", "filter `wordwrap` would make 1,200,002 characters"),
        ("{{ '%2000000s'|format('x') }}", "filter `format` would make 2,000,010 characters"),
        ("{{ '%(a)2000000s'|format(a='x') }}", "filter `format` would make 2,000,013 characters"),
        ("{{ '%*s'|format(2000000, 'x') }}", "filter `format` would make 2,000,004 characters"),
        ("{{ '%.*f'|format(2000000, 1.5) }}", "filter `format` would make 2,000,020 characters"),
        ("{{ '%%%2000000s'|format('x') }}", "filter `format` would make 2,000,012 characters"),
        ("{{ ('a' * 1000)|replace('a', 'b' * 2000) }}", "filter `replace` would make 2,001,000 characters"),
        ("{{ ('ab' * 1000)|replace(old='ab', new='c' * 2000) }}", "filter `replace` would make 2,002,000 characters"),
        ("{{ ('a' * 1000)|replace('', 'b' * 2000) }}", "filter `replace` would make 2,003,000 characters"),
        ("{{ range(1200)|map('string')|join('y' * 1000) }}", "filter `join` would make 1,203,690 characters"),
        ("{{ range(1200)|map('string')|join(d='y' * 1000) }}", "filter `join` would make 1,203,690 characters"),
        ("{{ [1, 2]|batch(3000000, 'f')|list }}", "filter `batch` would make 15,000,028 characters"),
        (
            "{{ [1, 2]|batch(linecount=3000000, fill_with='f')|list }}",
            "filter `batch` would make 15,000,028 characters",
        ),
        ("{{ [1]|slice(3000000)|list }}", "filter `slice` would make 27,000,016 characters"),
        ("{{ ('a ' * 20000)|urlize(target='t' * 10) }}", "filter `urlize` would make 1,480,000 characters"),
        ("{{ ('a ' * 20000)|urlize(rel='r' * 10) }}", "filter `urlize` would make 1,480,000 characters"),
        ("{{ ['a' * 200000]|tojson }}", "filter `tojson` would make 1,200,036 characters"),
        ("{{ [[1]]|tojson(indent=400000) }}", "filter `tojson` would make 2,400,087 characters"),
        ("{{ [[1]]|tojson(indent='-' * 400000) }}", "filter `tojson` would make 2,400,087 characters"),
        ("{{ {'k': [1, {'j': 2}]}|tojson(400000) }}", "filter `tojson` would make 6,000,293 characters"),
        ("{{ [['a' * 1000030]]|pprint }}", "filter `pprint` would make 1,000,051 characters"),
        # str methods, sized from their arguments.
        ("{{ 'x'.ljust(2000000) }}", "`.ljust()` would make 2,000,000 characters"),
        ("{{ 'x'.center(width=2000000) }}", "`.center()` would make 2,000,000 characters"),
        ("{{ ('a' ~ '\\t' ~ 'b').expandtabs(2000000) }}", "`.expandtabs()` would make 2,000,003 characters"),
        ("{{ ('a' ~ '\\t' ~ 'b').expandtabs(tabsize=2000000) }}", "`.expandtabs()` would make 2,000,003 characters"),
        ("{{ ('a' * 1000).replace('a', 'b' * 2000) }}", "`.replace()` would make 2,001,000 characters"),
        ("{{ 'abc'.translate({97: 'x' * 400000}) }}", "`.translate()` would make 1,200,000 characters"),
        ("{{ ('y' * 1000).join(range(1200)|map('string')) }}", "`.join()` would make 1,203,690 characters"),
        ("{{ (1).to_bytes(2000000, 'big') }}", "`.to_bytes()` would make 2,000,000 characters"),
        ("{{ lipsum(n=1000, min=50, max=100) }}", "`lipsum()` would make 1,220,000 characters"),
        ("{{ lipsum(1000, True, 100, 50) }}", "`lipsum()` would make 1,220,000 characters"),
        ("{{ '{:>2000000}'.format('x') }}", "`.format()` would make 2,000,001 characters"),
        ("{{ '{:>1000000.1000000}'.format('x') }}", "`.format()` would make 2,000,001 characters"),
        ("{{ '{!r:>2000000}'.format('x') }}", "`.format()` would make 2,000,003 characters"),
        ("{{ '{:>{w}}'.format('x', w=2000000) }}", "`.format()` would make 2,000,001 characters"),
        # Operators.
        ("{{ 'ab' * 600000 }}", "`*` would make 1,200,000 characters"),
        ("{{ 600000 * 'ab' }}", "`*` would make 1,200,000 characters"),
        ("{{ ['ab'] * 200000 }}", "`*` would make 1,600,000 characters"),
        ("{{ '%2000000s' % 'x' }}", "`%` would make 2,000,010 characters"),
        ("{{ ('a' * 600000) + ('b' * 600000) }}", "`+` would make 1,200,000 characters"),
        ("{{ ('a' * 600000) ~ ('b' * 600000) }}", "`~` would make 1,200,000 characters"),
        # How values print: True/None 5, a float 16, 'ab' 2, 12345 6 (14 bits), each item 4 more, brackets 2.
        ("{{ [True, None, 1.5, 'ab', 12345] * 300000 }}", "`*` would make 16,800,000 characters"),
        ("{{ [{'a': 1}] * 300000 }}", "`*` would make 7,500,000 characters"),
        ("{{ ['ab'.encode()] * 300000 }}", "`*` would make 2,400,000 characters"),
        ("{% set ns = namespace(a='xy') %}{{ [ns] * 300000 }}", "`*` would make 7,500,000 characters"),
        ("{{ [10 ** 100] * 100000 }}", "`*` would make 10,800,000 characters"),
        # Counting stops once past the cap (4,903 items of 204 characters), and 32 levels down.
        ("{{ range(10000)|map('string')|map('center', 200)|list }}", "filter `list` would make 1,000,214 characters"),
        ("{{ " + "[" * 35 + "'x'" + "]" * 35 + " * 100000 }}", "`*` would make 100,023,300,000 characters"),
        (
            "{{ " + "[" * 35 + "'x'" + "]" * 35 + "|tojson(100000) }}",
            "filter `tojson` would make 111,601,431 characters",
        ),
        ("{{ ['a' * 400000]|tojson(indent=none) }}", "filter `tojson` would make 2,400,036 characters"),
        ("{{ ['a' * 400000]|tojson(0) }}", "filter `tojson` would make 2,400,036 characters"),
        ("{{ [1]|batch(300000)|list }}", "filter `batch` would make 2,700,016 characters"),
        ("{{ ('ab' * 1000)|replace('ab', 'c' * 2000, -1) }}", "filter `replace` would make 2,002,000 characters"),
        # A big number prints about 0.30103 digits a bit (289 bits: 86 digits; 681 bits: 205), plus 2.
        ("{{ [2 ** 288] * 100000 }}", "`*` would make 9,400,000 characters"),
        ("{{ [2 ** 680] * 100000 }}", "`*` would make 21,300,000 characters"),
        # A value that is not text: `format` refuses it once it prints past the cap.
        ("{% set s = 'x' * 1000030 %}{{ {'a': s}|format }}", "filter `format` would make 1,000,041 characters"),
        ("{{ ((('a' ~ '\\n') * 300000))|indent }}", "filter `indent` would make 1,800,004 characters"),
        ("{{ range(1200)|map('string')|map('center', 900)|join }}", "filter `join` would make 1,080,000 characters"),
        ("{{ (('a' ~ '\\t') * 1000).encode().expandtabs(2000) }}", "`.expandtabs()` would make 2,002,000 characters"),
        ("{{ (('a' ~ '\\t') * 200000).expandtabs() }}", "`.expandtabs()` would make 2,000,000 characters"),
        ("{{ '%1000040s' % 'abc' }}", "`%` would make 1,000,052 characters"),
        ("{{ ('a ' * 20000)|urlize(none, false, 't' * 20) }}", "filter `urlize` would make 1,680,000 characters"),
        ("{{ ('a ' * 20000)|urlize(none, false, none, 'r' * 20) }}", "filter `urlize` would make 1,780,000 characters"),
        ("{% set s = 'x' * 500020 %}{{ {'a': s}|urlize }}", "filter `urlize` would make 1,000,074 characters"),
        ("{% set s = 'x' * 1000034 %}{{ [s, 'x'] }}", "printing a value would make 1,000,045 characters"),
        ("{{ {'a': '%1000040s'}|format }}", "filter `format` would make 1,000,063 characters"),  # printed, then %
        # Keyword arguments count as their positions would (newer Pythons accept some of them).
        ("{{ ('a' * 1000).replace('a', 'b' * 2000, count=600) }}", "`.replace()` would make 1,201,000 characters"),
        ("{{ 'aa'.replace(old='a', new='b' * 600000) }}", "`.replace()` would make 1,200,002 characters"),
        ("{{ 'a'.replace(new='b' * 600000) }}", "`.replace()` would make 1,200,001 characters"),  # old '': 2 places
        ("{{ 'abc'.translate(table={97: 'x' * 400000}) }}", "`.translate()` would make 1,200,000 characters"),
    ],
)
def test_a_refusal_names_the_estimate_and_the_cap(text: str, message: str) -> None:
    assert refusal(text) == f"{message}; {CAP}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ 2 ** 100000 }}", "`**` would make a number of about 30,103 digits; the cap is 4,300"),
        ("{{ 10 ** 5000 }}", "`**` would make a number of about 5,000 digits; the cap is 4,300"),
        ("{{ (10 ** 3000) * (10 ** 3000) }}", "`*` would make a number of about 6,000 digits; the cap is 4,300"),
        (
            "{% set s = 'a' * 900000 %}{% for i in range(5) %}{{ s[1:]|length }}{% endfor %}",
            "a slice would take the characters made by this render past 4,000,160",
        ),
        (
            "{% for i in range(5) %}{{ '{:>900000}'.format('x')|length }}{% endfor %}",
            "`.format()` would take the characters made by this render past 4,000,160",
        ),
        (
            "{% for i in range(5) %}{{ ('x' * 900000)|length }}{% endfor %}",
            "`*` would take the characters made by this render past 4,000,160",
        ),
        (
            # Thousands separators make 10 ** 4000 longer (5,334) than its estimate (4,002): the work counts them.
            "{% set a = 'x' * 1000040 %}" * 3 + "{% set d = 'x' * 995040 %}{{ '{:,}'.format(10 ** 4000) }}",
            "`.format()` would take the characters made by this render past 4,000,160",
        ),
        # `+` does not check ints: a number one bit past the cap is refused even to the power 1.
        (
            "{{ ((2 ** 14284 + 2 ** 14284) ** 1) > 0 }}",
            "`**` would make a number of about 4,300 digits; the cap is 4,300",
        ),
        ("{{ range(10001) }}", "range(10001) would give more than 10,000 items"),
        ("{{ range(0, 10 ** 30) }}", "range(0, 1000000000000000000000000000000) would give more than 10,000 items"),
    ],
)
def test_numbers_and_the_work_of_a_render_are_capped_too(text: str, message: str) -> None:
    assert refusal(text) == message


@pytest.mark.parametrize(
    ("text", "output"),
    [
        ("{{ ('x'|center(1000040))|length }}", "21000040"),  # exactly the cap
        ("{{ ('a' * 1000)|replace('a', 'b' * 2000, 10)|length }}", "220990"),  # at most 10 replacements
        ("{{ ('a' * 1000).replace('a', 'b' * 2000, 10)|length }}", "220990"),
        ("{{ [['a' * 300000]]|pprint|length }}", "2300006"),
        ("{{ (2 ** 14284)|string|length }}", "24300"),
        ("{{ -1 ** 100000 }}{{ 1 ** 100000 }}{{ 7 ** 0 }}", "2111"),  # (-1) ** 100000
        ("{{ '{a}'.format_map({'a': 'x' * 10}) }}", "2xxxxxxxxxx"),
        ("{{ range(10000)|length }}{{ range(1, 10001)|length }}", "21000010000"),  # exactly MAX_RANGE
        ("{{ {'a': 'b' * 3, 'c': 'd'}|pprint }}", "2{'a': 'bbb', 'c': 'd'}"),
        ("{{ ('x' * 999000)|pprint|length }}", "2999002"),
        (
            "{{ 'x'|center(-5) }}{{ ['ab', 'cd']|join }}{{ [1, 2]|format }}{{ ('%s' * 3)|format(1, 2, 3) }}",
            "2xabcd[1, 2]123",
        ),
        ("{{ ('ab' * 1000)|replace('ab', 'c' * 2000, 3)|length }}", "27994"),
        ("{{ 1000|replace('1', 'c' * 3) }}", "2ccc000"),
        ("{{ ('x' * 1000)|urlize|length }}{{ 'x'|wordwrap(5, wrapstring=none) }}", "21000x"),
        ("{{ [1, 2, 3]|slice(2)|list }}{{ 'ab'|indent(2, true) }}", "2[[1, 2], [3]]  ab"),
        ("{% set s = 'x' * 1000023 %}{{ ({'a': s}|format)|length }}", "21000032"),  # prints to exactly the cap
        ("{{ '%s'|format([1, 2]) }}{{ '%s' % ([1, 2],) }}{{ '%s' % {'a': 1} }}", "2[1, 2][1, 2]{'a': 1}"),
        ("{{ [[1], [2]]|join(',') }}{{ ['a', 'b']|join([0]) }}{{ '{}'.format([1, 2]) }}", "2[1],[2]a[0]b[1, 2]"),
        ("{{ ('a' * 600000).translate({97: 98})|length }}", "2600000"),
        ("{{ ('a' ~ '\\t' ~ 'b').encode().expandtabs(4) }}", "2b'a   b'"),
        ("{{ ('%3s'.encode() % ('x'.encode(),))|length }}", "23"),
        ("{{ ('a' * 1000)|replace('a', 'b' * 2000, 0)|length }}", "21000"),
        ("{{ ('a' * 1000)|replace('a', 'b' * 2000, count=10)|length }}", "220990"),
        ("{{ 'abc'|replace([1], 'x') }}{{ [1, 2]|replace('1', 'x') }}", "2abc[x, 2]"),
        ("{{ ['a b']|urlize }}{{ 'see'|urlize(target=['t']) }}", "2[&#39;a b&#39;]see"),
        # Four values of exactly the cap: all the work a render may do, to the character.
        ("{% set a = 'x' * 1000040 %}" * 4 + "{{ a|length }}", "21000040"),
    ],
)
def test_values_up_to_the_caps_are_made(text: str, output: str) -> None:
    assert (
        compile_text("{{ responses|length }}" + text, "<t>").render(responses=["<answer 1>", "<answer 2>"], layer=2)
        == output
    )


def test_a_namespace_that_holds_itself_is_too_large_to_print() -> None:
    text = "{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ '{!r}'.format(ns) }}"
    # Counting stops 32 levels down (cap + 1), after 16 namespaces of 34 characters each on the way.
    assert refusal(text) == f"`.format()` would make 1,000,585 characters; {CAP}"


def test_a_negative_star_width_is_refused_before_the_string_is_made() -> None:
    # Python pads '%*s' % (-n, 'x') to n characters (left-justified): the estimate counts the width in full, so
    # the string is refused before it is made (it once counted as 0: 20 MB made here, 286 MB for -300,000,000).
    tracemalloc.start()
    try:
        assert refusal("{{ '%*s' % (-20000000, 'x') }}") == f"`%` would make 20,000,004 characters; {CAP}"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ 'a'.replace('a', 1) }}", "TypeError: replace() argument 2 must be str, not int"),
        ("{{ '%(a)s' % ('x',) }}", "TypeError: format requires a mapping"),
        ("{{ '%s %s' % ('x',) }}", "TypeError: not enough arguments for format string"),
        ("{{ [1, 2]|wordwrap(5) }}", "AttributeError: 'list' object has no attribute 'splitlines'"),
        (
            "{% set s = 'x' * 600000 %}{{ s|replace }}",
            "TypeError: do_replace() missing 2 required positional arguments: 'old' and 'new'",
        ),
    ],
)
def test_what_python_refuses_is_reported_as_python_says_it(text: str, message: str) -> None:
    assert refusal(text) == message


# --- a bounded environment built now: its filters are wrapped (and their sizes looked up) when it is made ---


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ 'x'|center(2000000) }}", "filter `center` would make 2,000,000 characters"),
        ("{{ ['a' * 200000]|tojson }}", "filter `tojson` would make 1,200,036 characters"),
        ("{{ ('a ' * 20000)|urlize(target='t' * 10) }}", "filter `urlize` would make 1,480,000 characters"),
        ("{{ ('a' * 1000)|replace('a', 'b' * 2000) }}", "filter `replace` would make 2,001,000 characters"),
        ("{{ ('x' * 400000)|wordwrap(5) }}", "filter `wordwrap` would make 1,200,002 characters"),
        ("{{ [1, 2]|batch(3000000, 'f')|list }}", "filter `batch` would make 15,000,028 characters"),
        ("{{ range(1200)|map('string')|join('y' * 1000) }}", "filter `join` would make 1,203,690 characters"),
        ("{{ 'ab' * 600000 }}", "`*` would make 1,200,000 characters"),
        ("{% set s = 'x' * 999990 %}{{ [s, 'x'] }}", "printing a value would make 1,000,001 characters"),
        ("{{ range(20000) }}", "range(20000) would give more than 10,000 items"),
    ],
)
def test_a_fresh_environment_outside_a_render_gives_each_operation_the_default_cap(text: str, message: str) -> None:
    environment = _BoundedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    with pytest.raises(_TooLarge) as info:
        environment.from_string(text).render()
    cap = "" if "items" in message else "; the cap is 1,000,000"
    assert str(info.value) == message + cap


def test_a_fresh_environment_is_strict_about_undefined_names() -> None:
    environment = _BoundedEnvironment(undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError):
        environment.from_string("{{ nothing }}").render()


def test_a_fresh_environment_prints_what_fits() -> None:
    environment = _BoundedEnvironment(undefined=jinja2.StrictUndefined)
    assert environment.from_string("{{ [1, 2]|batch(2, 'f')|list }}|{{ 'x'|center(3) }}").render() == "[[1, 2]]| x "


@pytest.mark.parametrize(
    ("count_name", "values", "kwargs", "size"),
    [
        ("linecount", [[1, 2], 3000000, "f"], {}, 15_000_028),  # 2 x 14 printed, 5 a filler (1 + 4)
        ("linecount", [[1, 2]], {"linecount": 3000000, "fill_with": "f"}, 15_000_028),
        ("linecount", [[1, 2], 10], {}, 118),  # no filler: None prints 5
        ("linecount", [["x"]], {}, 14),  # no count (Python refuses the call itself)
        ("slices", [[1], 3000000], {}, 27_000_016),
        ("slices", [[1]], {"slices": -5}, 16),
        ("linecount", [[1], 2, [0]], {}, 40),  # a list as filler prints 8
    ],
)
def test_batch_and_slice_make_their_value_twice_and_a_filler_per_slot(
    count_name: str, values: list[Any], kwargs: dict[str, Any], size: int
) -> None:
    assert _filler_size(count_name)(values, kwargs, 1_000_000) == size


# --- the sandbox: calls, blocks, buffers, operators ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ '{a:>2000000}'.format_map({'a': 'x'}) }}", f"`.format()` would make 2,000,001 characters; {CAP}"),
        ("{{ '{a}'.format_map({'a': 1}, b=2) }}", "TypeError: format_map() takes no keyword arguments"),
        ("{{ '{a}'.format_map() }}", "TypeError: format_map() takes exactly one argument (0 given)"),
        ("{{ ','.join([[1]]) }}", "TypeError: sequence item 0: expected str instance, list found"),
        ("{{ 'abc'['a':] }}", "str object has no element slice('a', None, None)"),
        # A str.format result is counted by the formatter and again as the call's result.
        (
            "{% set s = 'x' * 900000 %}{{ '{}'.format(s)|length }}{{ '{}'.format(s)|length }}",
            "`.format()` would take the characters made by this render past 4,000,160",
        ),
        # A callable without a name (a joiner) is named `.?()`.
        (
            "{% set j = joiner('x' * 1000040) %}{% set a = 'x' * 1000040 %}{% set b = 'x' * 1000040 %}"
            "{% set c = 'x' * 1 %}{{ j() }}{{ j()|length }}",
            "`.?()` would take the characters made by this render past 4,000,160",
        ),
        # A macro's output is counted as it is written, not again as the call's result.
        (
            "{% macro m() %}{% for i in range(1000) %}{{ t }}{% endfor %}{% endmacro %}{% set t = 'z' * 1000 %}"
            "{% set y = 'y' * 750000 %}{% set y = 'y' * 750000 %}{{ m()|length }}{{ m()|length }}",
            "a block's output would take the characters made by this render past 4,000,160",
        ),
        (
            "{{ (1).to_bytes(length=2000000, byteorder='big') }}",
            f"`.to_bytes()` would make 2,000,000 characters; {CAP}",
        ),
        ("{{ lipsum(min=100000, max=100000) }}", f"`lipsum()` would make 6,000,100 characters; {CAP}"),  # n = 5
        ("{{ lipsum(n=1000, min=200, max=10) }}", f"`lipsum()` would make 2,420,000 characters; {CAP}"),
        ("{{ lipsum(n=10000, max=10) }}", f"`lipsum()` would make 2,600,000 characters; {CAP}"),  # min 20
        ("{{ lipsum(1000, True, 20, 150) }}", f"`lipsum()` would make 1,820,000 characters; {CAP}"),
        ("{{ lipsum(n=1000, max=150) }}", f"`lipsum()` would make 1,820,000 characters; {CAP}"),
        ("{{ lipsum(n=1000, min=50) }}", f"`lipsum()` would make 1,220,000 characters; {CAP}"),  # max 100
        ("{{ 10 ** 100000 }}", "`**` would make a number of about 30,103 digits; the cap is 4,300"),
        ("{{ 3 ** 14284 }}", "`**` would make a number of about 6,815 digits; the cap is 4,300"),
        # Blocks: a set block's pieces, a loop's appended pieces, a block called again (a generator).
        (
            "{% set y %}a{{ 'x' * 600000 }}b{{ 'y' * 600000 }}{% endset %}{{ y|length }}",
            f"a block's output would make 1,200,006 characters; {CAP}",
        ),
        (
            "{% set y %}{% for i in range(3) %}{{ 'x' * 400000 }}{% endfor %}{% endset %}{{ y|length }}",
            f"a block's output would make 1,200,000 characters; {CAP}",
        ),
        (
            "{% set s = 'x' * 1000040 %}{% set y %}{% for i in range(1) %}{{ s }}{% endfor %}{% endset %}",
            f"a block's output would make 1,000,041 characters; {CAP}",
        ),
        (
            "{% if false %}{% block b %}{{ 'x' * 600000 }}{{ 'y' * 600000 }}{% endblock %}{% endif %}"
            "{{ self.b()|length }}",
            f"a block's output would make 1,200,000 characters; {CAP}",
        ),
    ],
)
def test_the_sandbox_refuses_with_what_it_counted(text: str, message: str) -> None:
    assert refusal(text) == message


@pytest.mark.parametrize(
    ("text", "output"),
    [
        (
            "{{ ('<b>{}</b>'|safe).format('<i>') }}{{ ('{0[0]}'|safe).format(['<']) }}{{ '{0[0]}'.format(['x']) }}",
            "2<b>&lt;i&gt;</b>&lt;x",
        ),
        ("{{ ','.join(['a', 'b']) }}{{ ','.join(range(3)|map('string')) }}{{ 'a b'.split() }}", "2a,b0,1,2['a', 'b']"),
        ("{% set j = joiner(',') %}{{ j() }}{{ j() }}", "2,"),
        ("{{ 1.5 * 100000 }}{{ 100000 * 1.5 }}{{ 3 * [1] }}{{ [1] + [2] }}", "2150000.0150000.0[1, 1, 1][1, 2]"),
        ("{% autoescape true %}{{ (responses[0]|safe) ~ '<' }}{% endautoescape %}", "2<answer 1>&lt;"),
        # Decided when rendered (volatile): joined as plain text, then escaped, as Jinja's own generator does.
        ("{% autoescape layer > 1 %}{{ (responses[0]|safe) ~ '<' }}{% endautoescape %}", "2&lt;answer 1&gt;&lt;"),
        ("{% autoescape layer > 5 %}{{ (responses[0]|safe) ~ '<' }}{% endautoescape %}", "2<answer 1><"),
        ("{% set y %}{% for i in range(3) %}ab{% endfor %}{% endset %}{{ y }}", "2ababab"),
        ("{% if false %}{% block b %}a{{ layer }}b{% endblock %}{% endif %}{{ self.b() }}", "2a2b"),
        ("{{ [1] ~ 'x' }}{% set y %}a{{ layer }}b{% endset %}{{ y }}", "2[1]xa2b"),
        (
            "{% macro m() %}{% for i in range(1000) %}{{ t }}{% endfor %}{% endmacro %}{% set t = 'z' * 1000 %}"
            "{% set y = 'y' * 750000 %}{% set y = 'y' * 750000 %}{{ m()|length }}",
            "21000000",
        ),
        # All the work a render may do, to the character; then a range prints without being measured.
        ("{% set a = 'x' * 1000040 %}" * 4 + "{{ a|length }}{{ range(3) }}", "21000040range(0, 3)"),
    ],
)
def test_the_sandbox_makes_what_fits(text: str, output: str) -> None:
    assert (
        compile_text("{{ responses|length }}" + text, "<t>").render(responses=["<answer 1>", "<answer 2>"], layer=2)
        == output
    )


@pytest.mark.parametrize(
    "text",
    [
        "{% set a = 'a' * 1000000 %}{{ a ~ a ~ a ~ a ~ a ~ a ~ a ~ a }}",
        "{% set a = 'a' * 990000 %}{{ a + a + a + a }}",
        "{{ (1).to_bytes(length=30000000, byteorder='big') }}",
    ],
)
def test_joins_sums_and_keyword_sizes_are_refused_before_they_are_made(text: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match="would make"):
            compile_text("{{ responses }}" + text, "<t>")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * 2**20  # the 1 MB operand, never the 2 MB or more result


# --- what a failure says, whatever raised it ------------------------------------------------------------------


def test_a_syntax_error_names_its_own_line_and_a_python_one_names_none() -> None:
    # Jinja gives a syntax error a traceback with no template frame: its line comes from the error itself.
    assert _explain(jinja2.TemplateSyntaxError("bad", lineno=7)) == "failed to render at line 7: bad\n  line 7"
    # A Python SyntaxError has a line too, but of Python source, not of the template.
    assert _explain(SyntaxError("bad", ("f.py", 3, 1, "x"))) == "failed to render: SyntaxError: bad (f.py, line 3)"


def test_values_folded_while_compiling_share_one_budget() -> None:
    # Jinja folds constant filter calls while compiling; with a fresh budget for each, all five 1M values would
    # be folded into the code and escape the render's count.  Sharing one, they are made (and refused) there.
    text = "{% set a = 'x'|center(1000000) %}" * 5
    assert refusal(text) == "filter `center` would take the characters made by this render past 4,000,160"


# --- to the last character: a render with none, or one, left to make -------------------------------------------

#: Values of exactly the cap, four times: all the work the trial render may do (4 x 1,000,040).
SPENT = "{% set a = 'x' * 1000040 %}" * 4
#: All of it but one character.
ONE_LEFT = "{% set a = 'x' * 1000040 %}" * 3 + "{% set a = 'x' * 1000039 %}"
PAST = "would take the characters made by this render past 4,000,160"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The estimate without the argument: `replace` with no `new` still makes its one character ...
        (SPENT + "{{ 'a'.replace('a') }}", f"`.replace()` {PAST}"),
        # ... and `to_bytes` with no length its one byte, refused before Python says it cannot.
        (SPENT + "{{ (256).to_bytes() }}", f"`.to_bytes()` {PAST}"),
        # Python's own refusal once the estimate fits: `center` without a width makes 0 characters, `replace`
        # without `new` 1, and 1 is left.
        (SPENT + "{{ ''.center() }}", "TypeError: center expected at least 1 argument, got 0"),
        (ONE_LEFT + "{{ 'a'.replace('a') }}", "TypeError: replace expected at least 2 arguments, got 1"),
        # An invalid slice makes nothing: indexing says why.
        (SPENT + "{{ 'abc'['a':] }}", "str object has no element slice('a', None, None)"),
        # A block's output is counted once it ends: the work done after its last piece counts first.
        (
            "{% if false %}{% block b %}{{ 'x' * 1000000 }}"
            + "{% set y = 'y' * 1000000 %}" * 3
            + "{% endblock %}{% endif %}{{ self.b()|length }}",
            f"a block's output {PAST}",
        ),
    ],
)
def test_the_last_characters_are_refused_by_the_estimate_that_names_them(text: str, message: str) -> None:
    assert refusal(text) == message


@pytest.mark.parametrize(
    ("text", "output"),
    [
        (SPENT + "{{ (5).bit_length() }}", "23"),  # an int's other methods make no text
        (ONE_LEFT + "{{ (1).to_bytes() }}", "2b'\\x01'"),  # one byte, by default
        ("{{ [layer] ~ 'x' }}", "2[2]x"),  # a list joined by `~` is measured as it prints
    ],
)
def test_the_last_characters_are_made(text: str, output: str) -> None:
    assert (
        compile_text("{{ responses|length }}" + text, "<t>").render(responses=["<answer 1>", "<answer 2>"], layer=2)
        == output
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Escaping makes a Markup join four times longer than its operands: the result counts.
        (
            "{% autoescape true %}{{ (responses[0]|safe) ~ ('<' * 600000) }}{% endautoescape %}",
            f"`~` would make 2,400,010 characters; {CAP}",
        ),
        # `%r` doubles a newline: the result counts, past the estimate of the value as printed.
        ("{{ '%r' % ('\\n' * 600000) }}", f"`%` would make 1,200,002 characters; {CAP}"),
    ],
)
def test_results_longer_than_their_estimate_are_refused_as_they_are_counted(text: str, message: str) -> None:
    assert refusal(text) == message


@pytest.mark.parametrize(
    ("text", "method", "args"),
    [
        ("{:>2000000}", "format", ("x",)),
        ("{a:>2000000}", "format_map", ({"a": "x"},)),
    ],
)
def test_a_str_format_method_handed_in_as_a_value_is_sized_like_one_looked_up(
    text: str, method: str, args: tuple[Any, ...]
) -> None:
    # A template looks `format` up through the sandbox, which wraps it; a caller can hand in the bare method.
    environment = _BoundedEnvironment(undefined=jinja2.StrictUndefined)
    with pytest.raises(_TooLarge) as info:
        environment.from_string("{{ f(*args) }}").render(f=getattr(text, method), args=args)
    assert str(info.value) == "`.format()` would make 2,000,001 characters; the cap is 1,000,000"
