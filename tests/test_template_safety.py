"""Templates fail as ``TemplateError`` and stay bounded in memory, whatever a recipe's author writes."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moa._templates as templates
from moa import TemplateError
from moa._templates import compile_text, load

MB = 2**20


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Trace allocations inside the block; the yielded function gives the peak so far, in bytes."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------ errors are TemplateError, with source and line


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("{{ responses }}\n{% for i in range(100000000) %}{{ i }}{% endfor %}", 2),
        ("{{ responses }}\n\n{{ 1 / 0 }}", 3),
        ("{{ responses }}\n{{ 10.0 ** 400 }}", 2),
        ("{{ responses }}\n{{ responses|no_such_filter }}", 2),
        ("{{ responses }}\n{{ responses is no_such_test }}", 2),
    ],
)
def test_every_failure_is_a_template_error_naming_source_and_line(text: str, line: int) -> None:
    with pytest.raises(TemplateError, match=rf"template <t>.*line {line}"):
        compile_text(text, "<t>")


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("include", "{% include 'x.j2' %}"),
        ("import", "{% import 'x.j2' as x %}"),
        ("from", "{% from 'x.j2' import y %}"),
        ("extends", "{% extends 'x.j2' %}"),
    ],
)
def test_loading_other_files_is_refused_at_compile_time(tag: str, text: str) -> None:
    # Inside a branch the trial render never takes: only a compile-time check can see it.
    source = "{{ responses }}\n{% if layer > 99 %}\n" + text + "\n{% endif %}"
    with pytest.raises(TemplateError, match=rf"<t>, line 3: templates cannot load other files \({{% {tag} %}}"):
        compile_text(source, "<t>")


# ------------------------------------------------------------------------------ memory is bounded

HUGE = [
    "{{ 'a' * 300000000 }}",
    "{{ 300000000 * 'a' }}",
    "{{ ['a'] * 300000000 }}",
    "{{ 2 ** 100000000 }}",
    "{{ '%300000000s' % 'x' }}",
    "{{ '%*s' % (300000000, 'x') }}",
    "{{ '{:>300000000}'.format('x') }}",
    "{{ '{:>{w}}'.format('x', w=300000000) }}",
    "{{ 'x'|center(300000000) }}",
    "{{ 'x'|indent(300000000, true) }}",
    "{{ ('x ' * 1000)|wordwrap(1, wrapstring='-' * 300000) }}",
    "{{ '%300000000s'|format('x') }}",
    "{{ 'x'.center(300000000) }}",
    "{{ 'x'.ljust(300000000) }}",
    "{{ 'x'.rjust(300000000) }}",
    "{{ 'x'.zfill(300000000) }}",
    "{{ ('\t' * 1000).expandtabs(300000) }}",
    "{{ ('a' * 1000).replace('a', 'b' * 300000) }}",
    "{{ ('x' * 300000).join(['a'] * 1000) }}",
    "{{ (1).to_bytes(300000000, 'big') }}",
    "{{ lipsum(n=300000) }}",
    "{% for i in range(3000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{% set y %}{% for i in range(3000) %}{{ 'x' * 100000 }}{% endfor %}{% endset %}{{ y|length }}",
    "{% macro m() %}{% for i in range(3000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "{% set b = 'x' * 900000 %}{{ [b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b]|join }}",
    "{% set a = 'ab' %}" + "{% set a = a ~ a %}" * 28 + "{{ a|length }}",
]


@pytest.mark.parametrize("text", HUGE)
def test_huge_values_are_refused_before_they_are_made(text: str) -> None:
    with peak_memory() as peak:
        with pytest.raises(TemplateError, match="template <t>"):
            compile_text("{{ responses }}" + text, "<t>")
        assert peak() < 64 * MB


def test_output_may_fill_the_cap_and_no_more() -> None:
    responses, fixed = ["r" * 1000] * 3, templates.MAX_OUTPUT_CHARS
    cap = templates.output_cap(responses)
    assert cap == fixed + templates.OUTPUT_CHARS_PER_RESPONSE_CHAR * 3000
    # Each response printed twice, plus the fixed allowance: exactly the cap, for any responses.
    fills = "{% for r in responses %}{{ r ~ r }}{% endfor %}{{ 'x' * " + str(fixed) + " }}"
    assert len(compile_text(fills, "<t>").render(responses=responses, layer=2)) == cap
    # Three times passes the cap with real responses (not with the short stand-ins of the load-time trial).
    over = "{% for r in responses %}{{ r ~ r ~ r }}{% endfor %}{{ 'x' * " + str(fixed - 100) + " }}"
    with pytest.raises(TemplateError, match=f"its output would pass the cap of {cap:,} characters"):
        compile_text(over, "<t>").render(responses=responses, layer=2)


@pytest.mark.parametrize("name", ["aggregate", "aggregate_seq"])
def test_long_real_responses_still_render(name: str) -> None:
    responses = [f"answer {i}: " + "word " * 4000 + "end" for i in range(64)]  # 64 responses of about 20,000 characters
    block = load(name).render(responses=responses, layer=2, step=2)
    assert all(response in block for response in responses)
    heavy = compile_text("{{ responses|join('\n\n') }}\n{% for r in responses %}{{ r|trim|upper }}{% endfor %}", "<t>")
    assert len(heavy.render(responses=responses, layer=2)) > 2 * sum(map(len, responses))


# ------------------------------------------------------------------------------- response counts


def test_check_names_the_response_count_a_template_fails_with() -> None:
    compiled = compile_text("Best: {{ responses[1] }}", "<t>")  # passes the two-response trial render
    compiled.check([2, 3, 8])
    with pytest.raises(TemplateError, match=r"template <t> fails when it receives 1 response\(s\): .*no element 1"):
        compiled.check([3, 1, 2])


def test_check_tries_each_step() -> None:
    compiled = compile_text("{% if step > 1 %}{{ responses[2] }}{% else %}{{ responses|length }}{% endif %}", "<t>")
    compiled.check([2], steps=[0, 1])
    with pytest.raises(TemplateError, match=r"fails when it receives 2 response\(s\) at step 2"):
        compiled.check([2], steps=[0, 1, 2])


@pytest.mark.parametrize("name", ["aggregate", "aggregate_seq"])
def test_builtin_templates_take_any_response_count(name: str) -> None:
    load(name).check(range(1, 65), steps=(0, 1, 2))


# ---------------------------------------------------------------------- generated templates

_INTS = ["0", "1", "2", "3", "-2", "40", "1000", "65536", "1000000", "3000000000", "10 ** 20"]
_STRINGS = ["'x'", "'ab'", "''", "'a\\tb'", "'%s'", "'%999999999s'", "'%*s'", "'{}'", "'{:>999999999}'", "'{0}{0}{0}'"]
_BY_NUMBER = ["|center", "|indent", "|truncate", "|wordwrap", "|format", ".center", ".ljust", ".zfill", ".expandtabs"]

# Typed building blocks, so that most templates get past type errors to the operations that could grow.
_ints: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        st.sampled_from([*_INTS, "layer", "step", "responses|length"]),
        st.builds("({} {} {})".format, _ints, st.sampled_from(["*", "**", "+", "%"]), _ints),
        st.builds("({})|length".format, _strings),
    )
)
_lists: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        st.sampled_from(["responses", "['a', 'b']", "[1, 'a']"]),
        st.builds("({} * {})".format, _lists, _ints),
        st.builds("({} + {})".format, _lists, _lists),
        st.builds("range({})|list".format, _ints),
        st.builds("({}).split()".format, _strings),
        st.builds("({})|batch({}, 'f')|list".format, _lists, _ints),
    )
)
_strings: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        st.sampled_from([*_STRINGS, "responses[0]", "responses[1]", "responses[7]"]),
        st.builds("({} * {})".format, _strings, _ints),
        st.builds("({} * {})".format, _ints, _strings),
        st.builds("({} ** {})".format, _ints, _ints),
        st.builds("({} ~ {})".format, _strings, _expressions),
        st.builds("({} + {})".format, _strings, _strings),
        st.builds("({} % {})".format, _strings, _expressions),
        st.builds("({} % ({}, {}))".format, _strings, _ints, _strings),
        st.builds("({}){}({})".format, _strings, st.sampled_from(_BY_NUMBER), _ints),
        st.builds("({}).format({}, {})".format, _strings, _expressions, _ints),
        st.builds("({}).replace({}, {})".format, _strings, _strings, _strings),
        st.builds("({})|replace({}, {})".format, _strings, _strings, _strings),
        st.builds("({}).join({})".format, _strings, _lists),
        st.builds("({})|join({})".format, _lists, _strings),
        st.builds("({})|string".format, _lists),
        st.builds("({})[{}]".format, _strings, _ints),
        st.builds("({})|tojson({})".format, _lists, _ints),
    )
)
_expressions: st.SearchStrategy[str] = st.deferred(lambda: st.one_of(_strings, _ints, _lists))
_statements = st.one_of(
    _expressions.map("{{{{ {} }}}}".format),
    _expressions.map("{{{{ {} }}}}".format),
    _expressions.map("{{% set v = {} %}}{{{{ v }}}}".format),
    st.sampled_from(["{% include 'x' %}", "{% import 'x' as y %}", "{% from 'x' import y %}", "{% extends 'x' %}"]),
)


def _block(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # Loop bodies always print something: a loop that prints nothing only burns CPU (out of scope here).
    bodies = st.lists(body, min_size=1, max_size=3).map("xxxxxxxxxx".join)
    counts = st.sampled_from(["0", "2", "40", "65536"])
    return st.one_of(
        st.builds("{{% for i in range({}) %}}x{}{{% endfor %}}".format, counts, bodies),
        bodies.map("{{% for r in responses %}}x{}{{% endfor %}}".format),
        bodies.map("{{% set b %}}{}{{% endset %}}{{{{ b ~ b }}}}".format),
        bodies.map("{{% macro m() %}}{}{{% endmacro %}}{{{{ m() ~ m() }}}}".format),
        bodies.map("{{% filter upper %}}{}{{% endfilter %}}".format),
    )


_templates = st.lists(st.recursive(_statements, _block, max_leaves=4), min_size=1, max_size=3).map(
    lambda parts: "\n".join(parts) + "{{ responses|length }}"
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_templates, responses=st.lists(st.text(max_size=30), max_size=4))
def test_generated_templates_render_within_the_cap_or_fail_as_template_error(text: str, responses: list[str]) -> None:
    with peak_memory() as peak:
        try:
            output = compile_text(text, "<gen>").render(responses=responses, layer=2, step=1)
        except TemplateError as exc:
            assert "template <gen>" in str(exc)
        else:
            assert len(output) <= templates.output_cap(responses)
        assert peak() < 200 * MB
