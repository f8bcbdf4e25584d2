"""Planning is pure: message building, parameter precedence, counting."""

from __future__ import annotations

import re

import pytest

import moa
from moa._call import call_params
from moa._prompt import build_messages, normalize_prompt
from moa.recipe import Agent, CallParams, seq_windows


def test_references_become_a_new_system_message() -> None:
    conversation = [{"role": "user", "content": "Q"}]
    assert build_messages(conversation, references="REFS") == [
        {"role": "system", "content": "REFS"},
        {"role": "user", "content": "Q"},
    ]


def test_references_are_appended_to_an_existing_system_message_after_a_blank_line() -> None:
    conversation = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    messages = build_messages(conversation, references="REFS")
    assert messages[0] == {"role": "system", "content": "Be terse.\n\nREFS"}
    assert messages[1:] == conversation[1:]  # user and assistant turns unchanged
    assert conversation[0]["content"] == "Be terse."  # the input is not mutated


def test_agent_system_prompt_comes_first() -> None:
    conversation = [{"role": "system", "content": "Conv."}, {"role": "user", "content": "Q"}]
    messages = build_messages(conversation, system="Agent.", references="REFS")
    assert messages[0]["content"] == "Agent.\n\nConv.\n\nREFS"
    assert build_messages([{"role": "user", "content": "Q"}]) == [{"role": "user", "content": "Q"}]


def test_parameter_precedence_defaults_agent_overrides() -> None:
    defaults = CallParams(temperature=0.7, max_tokens=100, api_base="http://d", extra={"seed": 1, "stop": ["x"]})
    agent = Agent(model="openai/a", temperature=0.2, extra={"seed": 2})
    params, key_env = call_params(defaults, agent, CallParams(max_tokens=50, top_p=0.5))
    assert params == {
        "timeout": 120.0,
        "temperature": 0.2,
        "max_tokens": 50,
        "api_base": "http://d",
        "seed": 2,
        "stop": ["x"],
        "top_p": 0.5,
    }
    assert key_env is None
    _, key_env = call_params(CallParams(api_key_env="A_KEY"), agent, None)
    assert key_env == "A_KEY"


@pytest.mark.parametrize(
    ("inputs", "window", "expected"),
    [
        (6, 3, [(0, 3), (3, 5), (5, 6)]),
        (3, 3, [(0, 3)]),
        (2, 3, [(0, 2)]),
        (7, 2, [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]),
        (0, 3, []),
    ],
)
def test_seq_windows(inputs: int, window: int, expected: list[tuple[int, int]]) -> None:
    assert seq_windows(inputs, window) == expected


def test_paper_layer_counting_for_a_handmade_recipe() -> None:
    recipe = {
        "name": "p",
        "layers": [
            {"kind": "propose", "agents": [{"model": f"openai/m{i}"} for i in range(6)]},
            {"kind": "aggregate", "agents": [{"model": f"openai/m{i}"} for i in range(6)]},
            {"kind": "aggregate", "agents": [{"model": "openai/final"}]},
        ],
    }
    plans = moa.plan(recipe)
    assert [p.calls for p in plans] == [6, 6, 1]
    assert [p.sees_previous for p in plans] == [False, True, True]
    assert moa.load_recipe(recipe).calls_per_query == 13


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "the prompt is empty"),
        ("   \n", "the prompt is empty"),
        ([], "non-empty"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message"),
        ([{"role": "robot", "content": "hi"}], "prompt[0].role is 'robot'"),
        ([{"role": "user", "content": 3}], "prompt[0].content must be a string"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "system message may only come first",
        ),
        ([{"role": "user", "content": "  "}], "is empty"),
    ],
)
def test_bad_prompts(prompt: object, message: str) -> None:
    with pytest.raises(moa.PromptError, match=re.escape(message)):
        normalize_prompt(prompt)  # type: ignore[arg-type]
