"""Redaction's exact output: which values are secrets, the order they are masked in, and echoes of a key's head.

Written against the mutants of ``moa/_secrets.py`` that survived the rest of the suite
(``benchmarks/mutation_score.py``).  None of these values has a key's shape (``sk-...``), so only
the registry and the environment can make them secrets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moa import _secrets
from moa._secrets import looks_like_a_key_not_a_name, redact, register

#: 26 characters: long enough that an echo of its first 12 or more is masked.
LONG = "Vault7Harbor2Quill9Meadow4"


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test registers into a registry of its own (the real one is process-wide)."""
    monkeypatch.setattr(_secrets, "_registered", set())
    yield


def test_a_registered_value_of_six_characters_is_a_secret_and_five_is_not() -> None:
    register("Zq9#Lm")
    register("Yx8$K")
    assert redact("a Zq9#Lm b Yx8$K c") == "a *** b Yx8$K c"


def test_an_extra_value_of_six_characters_is_masked_too() -> None:
    assert redact("a Pq7!Rs b Pq7!R c", extra=["Pq7!Rs", "Pq7!R", None]) == "a *** b Pq7!R c"


def test_only_variables_named_as_secrets_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_MUTATION_PLAIN", "harmless-words-123")
    monkeypatch.setenv("MOA_MUTATION_PASSWORD", "pa55wd")
    monkeypatch.setenv("MOA_MUTATION_TOKEN", "t0k3n")
    assert redact("harmless-words-123 pa55wd t0k3n") == "harmless-words-123 *** t0k3n"


def test_the_longest_secret_is_masked_first_so_none_is_left_half_masked() -> None:
    register("vault9x")
    register("1vault9x")  # holds the other, and sorts before it
    assert redact("key 1vault9x") == "key ***"


def test_a_short_secret_is_masked_wherever_it_appears() -> None:
    register("Qm4!wz9#")  # shorter than the 12 characters of a masked echo
    assert redact("Qm4!wz9# then Qm4!wz9#.") == "*** then ***."


def test_every_echo_of_a_keys_head_is_masked_as_far_as_it_matches() -> None:
    register(LONG)
    text = f"{LONG[:12]} and [{LONG[:20]}] and [{LONG[:13]}!] and {'y' * 30}{LONG[:16]} tail {LONG[:14]}"
    assert redact(text) == f"*** and [***] and [***!] and {'y' * 30}*** tail ***"


def test_an_echo_shorter_than_twelve_characters_is_kept() -> None:
    register(LONG)
    assert redact(f"echo {LONG[:11]}!") == f"echo {LONG[:11]}!"


@pytest.mark.parametrize(
    ("value", "is_a_key"),
    [
        ("sk-abc12345", True),  # a key's shape, even short
        ("OPENAI_API_KEY", False),
        ("AZURE_API_KEY_2", False),  # a digit does not make a name a key
        ("MYKEY2", False),
        ("A_VERY_LONG_VARIABLE_NAME_HERE", False),
        ("ABCDEFGHIJ_123456789X", False),  # long, with digits, but an underscore
        ("abcdefghij012345678", False),  # 19 characters
        ("abcdefghij0123456789", True),  # 20 characters, a digit, no underscore
        ("abcdefghijklmnopqrstu", False),  # no digit
    ],
)
def test_a_value_given_as_a_variable_name_is_a_key_when_it_looks_like_one(value: str, is_a_key: bool) -> None:
    assert looks_like_a_key_not_a_name(value) is is_a_key
