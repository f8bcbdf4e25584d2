"""`moa calibrate`: fitting a cascade on an always-escalate eval run (real litellm, the loopback server), recovering a
known threshold, meeting each target, and refusing runs and files that do not match the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import loopback_recipe

import moa
from moa.cli import main
from moa.testing import LoopbackServer

#: Twenty questions "What is n + n?"; the small model is right on those it is sure of (confidence 0.8-0.95) and
#: wrong on the others (0.3-0.5): the threshold that keeps the big model's accuracy at least cost lies in (0.5, 0.8].
SURE = {n: 0.8 + 0.15 * (n % 4) / 3 for n in range(1, 21) if n % 3}
UNSURE = {n: 0.3 + 0.2 * (n % 5) / 4 for n in range(1, 21) if n % 3 == 0}


def number(body: dict[str, Any]) -> int:
    return int(body["messages"][-1]["content"].split()[2])


def reply(body: dict[str, Any], index: int) -> str:
    n = number(body)
    if body["model"] == "big":  # the big model says far more: it costs about seven times the tokens
        return " ".join(["Let me add the two numbers with care."] * 5) + f" Answer: {2 * n}"
    return f"Answer: {2 * n if n in SURE else 2 * n + 1}"


def token_logprob(body: dict[str, Any], text: str) -> float:
    n = number(body)
    return math.log(0.99 if body["model"] == "big" else {**SURE, **UNSURE}[n])


def write_questions(tmp_path: Path) -> Path:
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"What is {n} + {n}?", "answers": [2 * n]}) + "\n"
                            for n in range(1, 21)))  # fmt: skip
    return path


def cascade_recipe(server: LoopbackServer, tmp_path: Path, name: str = "c", **fields: Any) -> Path:
    layer = {"kind": "cascade", "score": {"type": "confidence"}, "strategy": "always_escalate",
             "tiers": [{"name": "small", "agent": {"model": "openai/small"}, "accept": 0.5},
                       {"name": "big", "agent": {"model": "openai/big"}}], **fields}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**loopback_recipe(server, [layer]), "name": name}))
    return path


@pytest.fixture
def run(tmp_path: Path) -> Any:
    """An always-escalate eval run of the two-tier cascade on the twenty questions; the server stays up."""
    with LoopbackServer(responder=reply, token_logprob=token_logprob) as server:
        recipe = cascade_recipe(server, tmp_path)
        data = write_questions(tmp_path)
        out = tmp_path / "dev"
        assert main(["eval", "qa", "-r", str(recipe), "--data", str(data), "--out", str(out)]) == 0
        assert len(server.completions("small")) == len(server.completions("big")) == 20
        yield server, recipe, data, out


def calibrate(recipe: Path, out: Path, data: Path, fitted: Path, *extra: str) -> int:
    return main(["calibrate", "-r", str(recipe), "--run", str(out), "--data", str(data), "--out", str(fitted), *extra])


def test_calibration_recovers_the_known_threshold_and_the_fitted_cascade_keeps_the_accuracy(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, recipe, data, out = run
    fitted = tmp_path / "fitted.yaml"
    capsys.readouterr()
    assert calibrate(recipe, out, data, fitted, "--holdout", "0.25") == 0
    printed = capsys.readouterr().out
    layer = yaml.safe_load(fitted.read_text())["layers"][0]
    assert layer["strategy"] == "threshold" and "accept" not in layer["tiers"][1]
    accept = layer["tiers"][0]["accept"]
    assert max(UNSURE.values()) < accept <= min(SURE.values()) + 1e-6
    assert "target: the best single tier's accuracy at the least cost" in printed
    assert "train: accuracy 100.0 % (95 % CI 100.0-100.0)" in printed
    assert "held out: accuracy 100.0 %" in printed and "always escalate 100.0 %" in printed
    assert f"wrote {fitted}" in printed
    assert fitted.read_text().startswith("# calibrated by moa calibrate on ")
    # The fitted recipe, run on the same questions: the big model only for the questions the small one got wrong.
    server.clear()
    again = tmp_path / "again"
    assert main(["eval", "qa", "-r", str(fitted), "--data", str(data), "--out", str(again)]) == 0
    summary = json.loads((again / "summary.json").read_text())
    assert summary["score"] == 100.0
    assert len(server.completions("small")) == 20 and len(server.completions("big")) == len(UNSURE)
    assert summary["control"]["layer 1 (cascade)"]["answered_by"] == {"small": 14 / 20, "big": 6 / 20}


def test_a_share_cap_trades_accuracy_for_fewer_escalations(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recipe, data, out = run
    fitted = tmp_path / "fitted.yaml"
    capsys.readouterr()
    assert calibrate(recipe, out, data, fitted, "--max-share", "10", "--holdout", "0") == 0
    accept = yaml.safe_load(fitted.read_text())["layers"][0]["tiers"][0]["accept"]
    # At most 2 of 20 may escalate: the two least sure (0.3 and 0.35, both wrong) do, so 14 + 2 are right.
    assert accept == pytest.approx(0.4)
    printed = capsys.readouterr().out
    assert "target: the best accuracy with big answering at most 10 % of queries" in printed
    assert "train: accuracy 80.0 %" in printed and "big answers 10 %" in printed


def test_cost_aware_calibration_writes_qualities_costs_and_a_lambda(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recipe, data, out = run
    fitted = tmp_path / "fitted.yaml"
    capsys.readouterr()
    assert calibrate(recipe, out, data, fitted, "--strategy", "cost_aware", "--holdout", "0") == 0
    # A lambda at which the small tier runs first and the big one only after a doubtful answer keeps 100 %: small
    # first needs lambda x (cost big - cost small) > 1.0 - 0.7, and big after a wrong answer (score 0.5 at most)
    # needs 1.0 - 0.5 > lambda x cost big, but not after a right one (0.8 at least): a window the fit finds.
    assert "train: accuracy 100.0 %" in capsys.readouterr().out
    layer = yaml.safe_load(fitted.read_text())["layers"][0]
    assert layer["strategy"] == "cost_aware" and layer["cost_unit"] == "tokens" and layer["cost_weight"] >= 0
    assert [t["quality"] for t in layer["tiers"]] == [0.7, 1.0]
    assert layer["tiers"][0]["cost"] < layer["tiers"][1]["cost"]
    assert moa.load_recipe(fitted).layers[0].strategy == "cost_aware"
    server, *_ = run
    server.clear()
    again = tmp_path / "again"
    assert main(["eval", "qa", "-r", str(fitted), "--data", str(data), "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["score"] == 100.0
    assert len(server.completions("big")) == len(UNSURE) and len(server.completions("small")) == 20


def test_runs_and_files_that_do_not_match_the_recipe_are_refused(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, recipe, data, out = run
    fitted = tmp_path / "fitted.yaml"
    tiers = [{"name": "tiny", "agent": {"model": "openai/small"}}, {"name": "big", "agent": {"model": "openai/big"}}]
    other = cascade_recipe(server, tmp_path, "other", tiers=tiers)
    capsys.readouterr()
    assert calibrate(other, out, data, fitted) == 2
    assert ("ran the tiers ['small', 'big'], but the recipe's cascade has ['tiny', 'big']: calibrate on a run of the "
            "same cascade with `strategy: always_escalate`") in capsys.readouterr().err  # fmt: skip
    # A run of the threshold cascade (not every tier ran on every question).
    stopping = cascade_recipe(server, tmp_path, "stopping", strategy="threshold")
    partial = tmp_path / "partial"
    assert main(["eval", "qa", "-r", str(stopping), "--data", str(data), "--out", str(partial)]) == 0
    capsys.readouterr()
    assert calibrate(stopping, partial, data, fitted) == 2
    assert "ran the tiers ['small'], but the recipe's cascade has ['small', 'big']" in capsys.readouterr().err
    # Questions that are not those of the run; a folder that is no run; a recipe without a cascade; bad flags.
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(data.read_text().splitlines(keepends=True)[:5]))
    assert calibrate(recipe, out, fewer, fitted) == 2
    assert "is not in the question file: calibrate on the data it was run on" in capsys.readouterr().err
    assert calibrate(recipe, tmp_path / "nowhere", data, fitted) == 2
    assert "no items.jsonl: give the output folder of `moa eval qa`" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(loopback_recipe(server, [{"kind": "propose", "agents": [{"model": "openai/a"}]}])))
    assert calibrate(plain, out, data, fitted) == 2
    assert "calibrate fits a recipe with exactly one cascade or route layer; it has 0" in capsys.readouterr().err
    assert calibrate(recipe, out, data, fitted, "--holdout", "1") == 2
    assert "--holdout must be at least 0 and below 1, got 1" in capsys.readouterr().err
    assert calibrate(recipe, out, data, fitted, "--max-cost", "0") == 2
    assert "no cascade over these tiers meets max_cost 0 on the training items" in capsys.readouterr().err
    assert not fitted.exists()


def test_a_fitted_threshold_is_the_exact_score_and_never_is_written_as_never(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A score of 0.8765437 must not be rounded up past itself; a tier that should never stop says `never`."""

    def odd_logprob(body: dict[str, Any], text: str) -> float:
        return math.log(0.99 if body["model"] == "big" else 0.8765437 if number(body) in SURE else 0.4)

    with LoopbackServer(responder=reply, token_logprob=odd_logprob) as server:
        recipe = cascade_recipe(server, tmp_path)
        data = write_questions(tmp_path)
        out = tmp_path / "dev"
        assert main(["eval", "qa", "-r", str(recipe), "--data", str(data), "--out", str(out)]) == 0
        fitted = tmp_path / "fitted.yaml"
        assert calibrate(recipe, out, data, fitted, "--holdout", "0") == 0
        written = yaml.safe_load(fitted.read_text())
        assert written["name"] == "c-calibrated" and written["layers"][0]["tiers"][0]["accept"] == 0.8765437
        server.clear()
        assert main(["eval", "qa", "-r", str(fitted), "--data", str(data), "--out", str(tmp_path / "again")]) == 0
        assert len(server.completions("big")) == len(UNSURE)  # the sure answers are accepted
        # Only the big model can be right (a regex only its wording matches): the small tier never stops it.
        strict = tmp_path / "strict.jsonl"
        rows = [{"id": f"q{n}", "prompt": f"What is {n} + {n}?", "regex": rf"care\. Answer: {2 * n}\b"}
                for n in range(1, 21)]  # fmt: skip
        strict.write_text("".join(json.dumps(row) + "\n" for row in rows))
        capsys.readouterr()
        assert calibrate(recipe, out, strict, fitted, "--holdout", "0") == 0
        assert "thresholds: small accept never" in capsys.readouterr().out
        layer = moa.load_recipe(fitted).layers[0]
        assert layer.tiers[0].accept == "never" and "small (never stops) -> big (its answer stands)" in layer.describe(
            0
        )


def test_relative_paths_survive_a_fitted_recipe_written_elsewhere_and_a_bad_one_leaves_no_file(
    run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _, data, _ = run
    folder = tmp_path / "recipes"
    folder.mkdir()
    big = loopback_recipe(server, [{"kind": "propose", "agents": [{"model": "openai/big"}]}])
    (folder / "big.yaml").write_text(yaml.safe_dump({**big, "name": "big-alone"}))
    layer = {"kind": "cascade", "score": {"type": "checks", "checks": [{"type": "regex", "pattern": "Answer"}]},
             "strategy": "always_escalate", "tiers": [{"name": "small", "agent": {"model": "openai/small"}},
                                                       {"name": "big", "recipe": "big.yaml"}]}  # fmt: skip
    relative = folder / "c.yaml"
    relative.write_text(yaml.safe_dump({**loopback_recipe(server, [layer]), "name": "rel"}))
    run_out = tmp_path / "rel-run"
    assert main(["eval", "qa", "-r", str(relative), "--data", str(data), "--out", str(run_out)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fitted = elsewhere / "fitted.yaml"
    assert calibrate(relative, run_out, data, fitted, "--holdout", "0") == 0
    assert yaml.safe_load(fitted.read_text())["layers"][0]["tiers"][1]["recipe"] == str(folder / "big.yaml")
    assert moa.load_recipe(fitted).layers[0].tiers[1]._loaded.name == "big-alone"
    # Flags and folders that cannot work: one line each, no traceback, nothing written.
    capsys.readouterr()
    assert calibrate(relative, run_out, data, tmp_path / "nowhere" / "f.yaml") == 2
    assert f"--out: the folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert main(["calibrate", "-r", str(relative), "--run", str(run_out), "--data", str(data), "--out",
                 str(tmp_path / "x.yaml"), "--bootstrap", "0"]) == 2  # fmt: skip
    assert calibrate(relative, run_out, data, tmp_path / "x.yaml", "--max-share", "150") == 2
    assert "--max-share must be a number from 0 to 100, got 150" in capsys.readouterr().err
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "items.jsonl").write_text((run_out / "items.jsonl").read_text().splitlines()[0] + "\n")
    assert calibrate(relative, tiny, data, tmp_path / "x.yaml", "--holdout", "0.9") == 2
    assert "1 item(s), all held out (--holdout 0.9): nothing to fit on" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists() and not list(tmp_path.glob(".*.partial"))


def test_a_tier_alone_that_is_as_accurate_for_less_is_named() -> None:
    from moa.eval._calibrate import Item, Policy, TierAnswer, single_beats

    # The cheap tier is never right, so the cascade pays for it on every item: the second tier alone is as accurate
    # for less; with a cheap tier that is right when sure, the cascade pays for itself.
    useless = [Item(f"q{n}", (TierAnswer(0.1, False, 1.0), TierAnswer(0.9, n % 2 == 0, 10.0))) for n in range(6)]
    policy = Policy("threshold", accept=[0.5])
    found = single_beats(policy, useless)
    assert found is not None and found[0] == 1 and found[1].cost == 10.0 and found[1].accuracy == 0.5
    useful = [Item(f"q{n}", (TierAnswer(0.9 if n < 3 else 0.1, n < 3, 1.0), TierAnswer(0.9, True, 10.0)))
              for n in range(6)]  # fmt: skip
    assert single_beats(policy, useful) is None
