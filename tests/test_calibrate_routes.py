"""`moa calibrate` for a route layer: a neighbours router fitted on a run of each route (real litellm, the loopback
server's embeddings), sending each kind of question where it is answered right at least cost; and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import loopback_recipe

import moa
from moa.cli import main
from moa.testing import LoopbackServer

#: Twenty questions of two kinds, each with its own words: sums (the fast model gets them right) and capitals (it
#: gets them wrong). The strong model gets both right, at about four times the tokens (the prompt included).
SUMS = {f"s{n}": (f"What is the sum of {n} plus {n}?", 2 * n) for n in range(1, 11)}
CAPITALS = {f"c{n}": (f"Which capital city lies on river number {n}?", 100 + n) for n in range(1, 11)}
QUESTIONS = {**SUMS, **CAPITALS}
BY_PROMPT = {prompt: (key, answer) for key, (prompt, answer) in QUESTIONS.items()}


def reply(body: dict[str, Any], index: int) -> str:
    key, answer = BY_PROMPT[body["messages"][-1]["content"]]
    if body["model"] == "strong":
        return " ".join(["I will think about this question with great care."] * 3) + f" Answer: {answer}"
    return f"Answer: {answer if key.startswith('s') else answer + 1}"


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def route_recipe(server: LoopbackServer, tmp_path: Path, **router: Any) -> Path:
    routes = [{"name": "fast", "agent": {"model": "openai/fast"}, "when": {"pattern": "sum"}},
              {"name": "strong", "agent": {"model": "openai/strong"}}]  # fmt: skip
    if router:  # (only rules read `when`)
        routes = [{k: v for k, v in route.items() if k != "when"} for route in routes]
    layer = {"kind": "route", "routes": routes, "router": router or {"type": "rules"}}
    return write(tmp_path / "route.yaml", {**loopback_recipe(server, [layer]), "name": "two-routes"})


@pytest.fixture
def runs(tmp_path: Path) -> Any:
    """A run of each route alone on the twenty questions; the server stays up."""
    with LoopbackServer(responder=reply) as server:
        data = tmp_path / "dev.jsonl"
        data.write_text("".join(json.dumps({"id": key, "prompt": prompt, "answers": [answer]}) + "\n"
                                for key, (prompt, answer) in QUESTIONS.items()))  # fmt: skip
        for name in ("fast", "strong"):
            alone = {"kind": "propose", "agents": [{"model": f"openai/{name}"}]}
            recipe = write(tmp_path / f"{name}.yaml", {**loopback_recipe(server, [alone]), "name": f"{name}-only"})
            assert main(["eval", "qa", "-r", str(recipe), "--data", str(data), "--out", str(tmp_path / name)]) in (0, 1)
        yield server, data


def calibrate(tmp_path: Path, recipe: Path, data: Path, *extra: str, runs: tuple[str, ...] = ("fast", "strong")) -> int:
    given = [arg for name in runs for arg in ("--run", f"{name}={tmp_path / name}")]
    return main(["calibrate", "-r", str(recipe), *given, "--data", str(data), "--out", str(tmp_path / "fitted.yaml"),
                 *extra])  # fmt: skip


def test_the_fitted_router_sends_each_kind_of_question_where_it_is_right_at_least_cost(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, data = runs
    recipe = route_recipe(server, tmp_path)
    server.requests.clear()
    assert calibrate(tmp_path, recipe, data, "--embedding", "openai/embedder", "--holdout", "0.3") == 0
    out = capsys.readouterr().out
    # The twenty prompts were embedded through the loopback server, in one request.
    (request,) = server.embedding_requests()
    assert request.body["model"] == "embedder" and len(request.body["input"]) == 20
    assert "target: the best single route's accuracy at the least cost" in out
    assert "held out: accuracy 100.0 %" in out and "fast alone" in out and "strong alone 100.0 %" in out
    fitted = yaml.safe_load((tmp_path / "fitted.yaml").read_text())
    router = fitted["layers"][0]["router"]
    assert fitted["name"] == "two-routes-calibrated"
    assert {k: router[k] for k in ("type", "embedding", "examples", "cost_unit")} == {
        "type": "neighbours", "embedding": {"model": "openai/embedder"}, "examples": "fitted.examples.jsonl",
        "cost_unit": "tokens"}  # fmt: skip
    assert all("when" not in route for route in fitted["layers"][0]["routes"])
    examples = [json.loads(line) for line in (tmp_path / "fitted.examples.jsonl").read_text().splitlines()]
    assert len(examples) == 14  # the training items (six held out)
    for example in examples:
        key, _ = BY_PROMPT[example["prompt"]]
        assert example["scores"] == {"fast": float(key.startswith("s")), "strong": 1.0}
        assert example["costs"]["strong"] > 3 * example["costs"]["fast"]  # tokens, the prompt included
        assert example["embedded_with"] == "openai/embedder" and len(example["embedding"]) == 64
    # The fitted recipe, run on every question: sums go to fast, capitals to strong; all right, no examples embedded.
    server.requests.clear()
    live = tmp_path / "live"
    assert main(["eval", "qa", "-r", str(tmp_path / "fitted.yaml"), "--data", str(data), "--out", str(live)]) == 0
    summary = json.loads((live / "summary.json").read_text())
    assert (summary["correct"], summary["attempted"]) == (20, 20)
    fast = sorted(BY_PROMPT[r.messages[-1]["content"]][0] for r in server.completions("fast"))
    assert fast == sorted(SUMS) and len(server.completions("strong")) == 10
    assert [len(r.body["input"]) for r in server.embedding_requests()] == [1] * 20


def test_a_cost_target_and_a_share_target_are_met(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, data = runs
    recipe = route_recipe(server, tmp_path, type="neighbours", embedding={"model": "openai/embedder"},
                          examples=[{"prompt": "x", "scores": {"fast": 1, "strong": 1}}])  # fmt: skip
    # At most the fast model's tokens per query: every question goes to fast (50 % right).
    fast_tokens = max(
        json.loads(line)["tokens"] for line in (tmp_path / "fast" / "items.jsonl").read_text().splitlines()
    )
    assert calibrate(tmp_path, recipe, data, "--max-cost", str(fast_tokens), "--holdout", "0") == 0
    out = capsys.readouterr().out
    assert "train (each routed by the others): accuracy 50.0 %" in out and "strong answers 0 %" in out
    # The recipe's own embedding model is used without --embedding.
    assert yaml.safe_load((tmp_path / "fitted.yaml").read_text())["layers"][0]["router"]["embedding"] == {
        "model": "openai/embedder"}  # fmt: skip
    assert calibrate(tmp_path, recipe, data, "--max-share", "50", "--holdout", "0") == 0
    out = capsys.readouterr().out
    assert "train (each routed by the others): accuracy 100.0 %" in out and "strong answers 50 %" in out
    assert calibrate(tmp_path, recipe, data, "--max-cost", "1", "--holdout", "0") == 2
    assert "no router over these routes meets max_cost 1 on the training items" in capsys.readouterr().err


def test_runs_that_do_not_match_the_routes_are_refused(
    runs: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, data = runs
    recipe = route_recipe(server, tmp_path)

    def refused(*extra: str, runs: tuple[str, ...] = ("fast", "strong")) -> str:
        assert calibrate(tmp_path, recipe, data, *extra, runs=runs) != 0
        assert not (tmp_path / "fitted.yaml").exists()
        return capsys.readouterr().err

    assert "--embedding MODEL: the route layer's router is `rules`" in refused()
    assert "--run: no run of the route(s) strong" in refused("--embedding", "e", runs=("fast",))
    given = ["--run", f"fast={tmp_path / 'strong'}", "--run", f"strong={tmp_path / 'strong'}", "--embedding", "e"]
    assert ("the route fast is openai/fast, but this run called openai/strong: give each route's own run"
            in refused(*given, runs=()))  # fmt: skip
    assert "'slow' is no route of the recipe; routes: fast, strong" in refused(
        "--run", f"slow={tmp_path}", "--embedding", "e", runs=("fast", "strong"))  # fmt: skip
    assert "a route layer needs NAME=DIR" in refused("--run", str(tmp_path / "fast"), "--embedding", "e", runs=())
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "zz", "prompt": "?", "answers": [1]}) + "\n")
    assert "item 's1' is not in the question file" in refused("--embedding", "e", "--data", str(other))
    # An embedding model that fails: a clear error, nothing written.
    server.add_fault("400", times=1, model="embedder")
    assert "embedding the prompts with openai/embedder failed: RequestRejectedError" in refused(
        "--embedding", "openai/embedder")  # fmt: skip


def test_the_fitted_files_load_and_moving_them_together_keeps_them_working(runs: Any, tmp_path: Path) -> None:
    server, data = runs
    assert calibrate(tmp_path, route_recipe(server, tmp_path), data, "--embedding", "openai/embedder") == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("fitted.yaml", "fitted.examples.jsonl"):
        (moved / name).write_text((tmp_path / name).read_text())
    loaded = moa.load_recipe(moved / "fitted.yaml")
    assert loaded.layers[0].router.examples == str(moved / "fitted.examples.jsonl")
