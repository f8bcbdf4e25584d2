"""A recognisable fake key, driven through every path, never shows up in anything moa writes."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import yaml
from conftest import agents, loopback_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moa
from moa.cli import main
from moa.testing import FakeProvider, LoopbackServer

SHAPES = [
    "sk-moa-LEAKCHECK-0123456789abcdef",  # a known prefix
    "9f1c2e7d4b8a60f3e5d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0",  # hex, no prefix (Together-like)
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY+9z",  # base64 with / and + (AWS-secret-like)
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtb2EifQ.c2lnbmF0dXJlMTIz",  # a JWT
]


@pytest.mark.parametrize("SECRET", SHAPES)
def test_key_never_leaks(
    SECRET: str,
    loopback: LoopbackServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MOA_LEAK_KEY", SECRET)
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    layers = [{"kind": "propose", "agents": agents("openai/gpt-4o-mini", "openai/p1")},
              {"kind": "aggregate", "agents": agents("openai/gpt-4o-mini")}]  # fmt: skip
    data = loopback_recipe(loopback, layers, defaults={"api_key_env": "MOA_LEAK_KEY", "timeout": 0.3},
                           retry={"max_attempts": 2})  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run = ["run", "Q", "--recipe", str(recipe)]
    codes = [main([*run, "--json"])]  # success
    loopback.add_fault("401", times=4, model="p1")
    codes.append(main(run))  # authentication failure
    loopback.add_fault("hang", times=4, model="p1")
    codes.append(main(run))  # timeouts
    codes.append(main([*run, "--max-cost", "0.0000001", "--allow-unpriced"]))  # budget
    codes.append(main([*run, "--set", "layers[0].agents[1].model=openai/gpt-4o-mini", "--deadline", "0.001"]))
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": 1, "prompt": "Q", "answers": ["x"]}\n')
    codes.append(main(["eval", "qa", "--recipe", str(recipe), "--data", str(qa), "--out", str(tmp_path / "qa")]))
    codes.append(main(["eval", "report", str(tmp_path / "qa"), "--html", str(tmp_path / "report.html")]))
    codes.append(main(["logs", "--json"]))
    for run_id in range(1, 6):
        codes.append(main(["logs", "show", str(run_id), "--json"]))
    assert codes[0] == 0 and 1 in codes[1:5]
    # The key did reach the server...
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in loopback.completions())
    # ...and nothing else: terminal output, the run database, eval files, the report.
    captured = capsys.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # Exceptions and traces from the library directly.
    loopback.add_fault("401", times=4, model="p1")
    with pytest.raises(moa.QuorumError) as info:
        await_run(data)
    assert SECRET not in str(info.value) and SECRET not in info.value.partial.model_dump_json()
    assert SECRET not in repr(info.value.failures[0].__dict__)


def await_run(recipe: dict[str, object]) -> moa.MoAResult:
    return moa.run_sync("Q", recipe)


# --------------------------------------------------------------------------------------------
# Keys of any shape, in a variable moa never names (litellm reads it), echoed by the provider.

_ALNUM = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
KEYS = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=64),  # hex, as Together's
    st.text(alphabet=_ALNUM + "+/", min_size=30, max_size=40).map(lambda s: s + "=="),  # base64, as AWS secrets
    st.lists(st.text(alphabet=_ALNUM + "-_", min_size=8, max_size=20), min_size=3, max_size=3).map(".".join),  # JWT
    st.uuids().map(str),
    st.text(alphabet=_ALNUM, min_size=16, max_size=40),  # no prefix, no structure
    st.text(alphabet=_ALNUM, min_size=20, max_size=40).map(lambda s: "sk-proj-" + s),
).filter(lambda key: any(c.isdigit() for c in key) and any(c.isalpha() for c in key))


def _everything_said(error: BaseException) -> str:
    """All an uncaught error would show: its text, its whole traceback (causes and contexts), its partial trace."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    partial = getattr(error, "partial", None)
    if partial is not None:
        parts.append(partial.model_dump_json())
    for failure in getattr(error, "failures", []):
        parts += [str(failure), repr(failure.__dict__), "".join(traceback.format_exception(failure))]
    return "\n".join(parts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS)
def test_a_key_moa_never_named_is_scrubbed_from_every_error_path(
    key: str, loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)  # read by litellm itself, not through api_key_env
    loopback.clear()
    events: list[str] = []

    def on_event(event: moa.Event) -> None:
        events.append(f"{event} {event.error} {event.output.model_dump_json() if event.output else ''}")

    layers = [{"kind": "propose", "agents": agents("openai/p0", "openai/p1"), "min_success": 1},
              {"kind": "aggregate", "agents": agents("openai/agg")}]  # fmt: skip
    recipe = loopback_recipe(loopback, layers, retry={"max_attempts": 2})
    loopback.add_fault("401", times=1, model="p1")  # quorum holds: the failed call is in the result
    result = moa.run_sync("Q", recipe, on_event=on_event)
    failed = result.layers[0].outputs[1]
    assert failed.error is not None and failed.error.status_code == 401
    assert "received Authorization: Bearer ***" in failed.error.message  # the provider echoed it; moa masked it
    assert key not in result.model_dump_json()
    loopback.add_fault("401", times=2, model="agg")  # no slack: QuorumError
    with pytest.raises(moa.QuorumError) as info:
        moa.run_sync("Q", recipe, on_event=on_event)
    assert key not in _everything_said(info.value)
    seq = loopback_recipe(loopback, [layers[0], {"kind": "aggregate_seq", "agents": agents("openai/agg")}])
    loopback.add_fault("401", times=1, model="agg")  # Self-MoA-Seq chained the raw litellm error before
    with pytest.raises(moa.QuorumError) as info:
        moa.run_sync("Q", seq, on_event=on_event)
    assert key not in _everything_said(info.value)
    assert events and key not in "\n".join(events)
    assert all(r.headers.get("authorization") == f"Bearer {key}" for r in loopback.completions())


def test_a_literal_key_where_a_name_or_setting_belongs_is_refused_unseen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "Zq8vLr2nWx5kTj9dHc3mPb7f"  # no known shape, in no variable: only its placement gives it away
    db = tmp_path / "runs.sqlite"
    monkeypatch.setenv("MOA_LOG_DB", str(db))
    recipe = {"name": "r", "layers": [{"kind": "propose", "agents": agents("openai/a")}]}
    assert main(["run", "Q", "--set", f"api_key_env={key}", "--recipe", "local"]) == 2
    assert main(["run", "Q", "--set", f"api_key_env=x-{key}", "--recipe", "local"]) == 2  # not even a name
    with pytest.raises(moa.ConfigError) as config:
        moa.run_sync("Q", recipe, api_key_env=key, provider=FakeProvider())
    assert key not in _everything_said(config.value)
    headers = {**recipe, "defaults": {"extra": {"extra_headers": {"Authorization": f"Bearer {key}"}}}}
    with pytest.raises(moa.RecipeError, match=r"extra\.extra_headers\.Authorization") as bad:
        moa.load_recipe(headers)
    assert key not in _everything_said(bad.value)
    for field in ({"aws_secret_access_key": key}, {"extra_body": {"token": f"sk-{key}"}}):
        with pytest.raises(moa.RecipeError) as bad:
            moa.load_recipe({**recipe, "defaults": {"extra": field}})
        assert key not in _everything_said(bad.value)
    captured = capsys.readouterr()
    assert key not in captured.out + captured.err
    assert not db.exists() or key.encode() not in db.read_bytes()
