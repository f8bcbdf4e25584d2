"""The `neighbours` router: embeddings through litellm's `aembedding` on the loopback server, nearest labelled
examples, quality less lambda x cost; and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import loopback_recipe

import moa
from moa._stages.neighbours import cosine, pick
from moa.recipe import NeighboursRouter
from moa.testing._embeddings import word_vector

# Two kinds of prompts with their own words (the loopback server embeds a hashed bag of words).
MATH = ["What is the sum of 12 plus 30?", "Add 7 plus 9 and give the sum.", "What is the sum of 100 plus 1?"]
GEO = ["Which river runs through the capital city?", "Name the capital city on the river.",
       "What river flows by the capital city?"]  # fmt: skip
ROUTES = [
    {"name": "math", "agent": {"model": "openai/solver"}},
    {"name": "geo", "agent": {"model": "openai/atlas"}},
]


def examples(math: tuple[float, float] = (1.0, 0.0), geo: tuple[float, float] = (0.0, 1.0),
             costs: dict[str, float] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Math prompts scored (math route, geo route) = ``math``; geo prompts ``geo``."""
    rows = [{"prompt": p, "scores": {"math": math[0], "geo": math[1]}} for p in MATH]
    rows += [{"prompt": p, "scores": {"math": geo[0], "geo": geo[1]}} for p in GEO]
    return [{**row, "costs": dict(costs)} if costs else row for row in rows]


def router(rows: Any, **fields: Any) -> dict[str, Any]:
    return {"type": "neighbours", "embedding": {"model": "openai/embedder"}, "examples": rows, "k": 3, **fields}


def recipe(server: Any, rows: Any, routes: list[dict[str, Any]] = ROUTES, **fields: Any) -> dict[str, Any]:
    retry = fields.pop("retry", {})
    layer = {"kind": "route", "routes": routes, "router": router(rows, **fields.pop("router", {})), **fields}
    return loopback_recipe(server, [layer], retry=retry)


def paths(server: Any) -> list[tuple[str, str]]:
    return [(r.path.rsplit("/", 1)[-1], r.model) for r in server.requests]


@pytest.mark.parametrize(("prompt", "route", "model"), [
    ("What is the sum of 5 plus 6?", "math", "solver"),
    ("Which capital city has a river?", "geo", "atlas"),
])  # fmt: skip
async def test_each_prompt_goes_to_the_route_that_did_best_on_its_nearest_examples(
    script: Any, prompt: str, route: str, model: str
) -> None:
    server = script({"solver": "11", "atlas": "Paris"})
    result = await moa.run(prompt, recipe(server, examples()), api_key="k")
    # The examples are embedded once (one request, every prompt), then the prompt, then the chosen route answers.
    assert paths(server) == [("embeddings", "embedder"), ("embeddings", "embedder"), ("completions", model)]
    assert server.requests[0].body["input"] == MATH + GEO
    assert server.requests[1].body["input"] == [prompt]
    assert server.requests[2].messages == [{"role": "user", "content": prompt}]
    (decision,) = result.layers[0].decisions
    assert (decision.option, decision.action, decision.score, decision.gain) == (route, "route", 1.0, 1.0)
    assert decision.reason.startswith("its 3 nearest examples (similarity ")
    assert decision.reason.endswith("math 1.00, geo 0.00" if route == "math" else "math 0.00, geo 1.00")
    assert result.output == {"math": "11", "geo": "Paris"}[route]
    # Both embedding calls are in the trace (no vectors there), priced and counted like any call.
    embeds = [o for o in result.layers[0].outputs if o.model == "openai/embedder"]
    assert [o.text for o in embeds] == ["(6 embedding(s) of 64 numbers)", "(1 embedding(s) of 64 numbers)"]
    assert embeds[1].messages == [{"role": "user", "content": prompt}]
    assert embeds[1].usage.prompt_tokens == len(prompt.split())  # the server's count: a word is a token
    assert "embedding" not in json.dumps(result.model_dump(mode="json")).replace("embedding(s)", "")
    assert result.model_calls == 3


async def test_a_loaded_recipe_embeds_its_examples_once_and_stored_vectors_are_not_embedded_again(
    script: Any, tmp_path: Path
) -> None:
    server = script({"solver": "11", "atlas": "Paris"})
    loaded = moa.load_recipe(recipe(server, examples()))
    for prompt in ("What is the sum of 1 plus 2?", "Which river is in the capital city?"):
        await moa.run(prompt, loaded, api_key="k")
    assert [len(r.body["input"]) for r in server.embedding_requests()] == [6, 1, 1]
    # A file whose vectors were made by this model: only the prompt is embedded.
    rows = [{**row, "embedding": word_vector(row["prompt"]), "embedded_with": "openai/embedder"} for row in examples()]
    file = tmp_path / "examples.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    server.requests.clear()
    result = await moa.run("What is the sum of 4 plus 4?", recipe(server, str(file)), api_key="k")
    assert paths(server) == [("embeddings", "embedder"), ("completions", "solver")]
    assert result.layers[0].answered_by == "math"
    # Vectors made by another model are not used: they are embedded again with this one.
    server.requests.clear()
    other = recipe(server, str(file), router={"embedding": {"model": "openai/other"}})
    await moa.run("What is the sum of 4 plus 4?", other, api_key="k")
    assert [len(r.body["input"]) for r in server.embedding_requests("other")] == [6, 1]


@pytest.mark.parametrize(("weight", "route"), [(0.0, "geo"), (0.5, "geo"), (2.0, "math")])
async def test_cost_weight_trades_expected_quality_for_expected_cost(script: Any, weight: float, route: str) -> None:
    # On geo prompts, geo is right (1.0) at cost 0.6 and math half right (0.5) at cost 0.1: geo's value is
    # 1 - 0.6 w, math's 0.5 - 0.1 w; they cross at w = 1.
    server = script({"solver": "11", "atlas": "Paris"})
    rows = examples(geo=(0.5, 1.0), costs={"math": 0.1, "geo": 0.6})
    result = await moa.run("Which river is in the capital city?", recipe(server, rows, router={"cost_weight": weight}),
                           api_key="k")  # fmt: skip
    (decision,) = result.layers[0].decisions
    assert decision.option == route
    quality, cost = (1.0, 0.6) if route == "geo" else (0.5, 0.1)
    assert decision.score == pytest.approx(quality) and decision.gain == pytest.approx(quality - weight * cost)
    if weight:
        assert f"geo 1.00 - {weight:g} x 0.6" in decision.reason and f"math 0.50 - {weight:g} x 0.1" in decision.reason


def test_pick_weights_the_nearest_examples_by_similarity_and_falls_back_to_every_example() -> None:
    rows = [
        {"prompt": "a", "scores": {"x": 1.0, "y": 0.0}},
        {"prompt": "b", "scores": {"x": 0.0}},  # y unscored here
        {"prompt": "c", "scores": {"y": 0.25, "x": 0.5}},
    ]
    config = NeighboursRouter.model_validate(router(rows, k=2))
    vectors = [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0)]
    # The query is nearest a (similarity 1.0) then b (0.6): x = (1*1 + 0.6*0) / 1.6; y only from a: 0.
    choice = pick(config, ["x", "y"], (1.0, 0.0), vectors)
    assert (choice.index, choice.quality) == (0, pytest.approx(1 / 1.6))
    # Nearest b then c: y is scored by c alone (0.25); x by both: (0.8*0 + 0.6... ) weighted.
    choice = pick(config, ["x", "y"], (0.0, 1.0), vectors)
    sims = {"b": 0.8, "c": 1.0}
    x = (sims["b"] * 0.0 + sims["c"] * 0.5) / (sims["b"] + sims["c"])
    assert choice.index == 0 and choice.quality == pytest.approx(x) and choice.value == pytest.approx(x)
    # No neighbour scores y: its quality is its mean over every example that does (0.125 here).
    only_b = NeighboursRouter.model_validate(router(rows, k=1))
    picked = pick(only_b, ["x", "y"], (0.6, 0.8), vectors)
    assert picked.index == 1 and picked.quality == pytest.approx(0.125)
    assert cosine((0.0, 0.0), (1.0, 0.0)) == 0.0


async def test_a_failed_prompt_embedding_goes_to_the_default_or_is_a_route_error(script: Any) -> None:
    server = script({"solver": "11", "atlas": "Paris"})
    loaded = moa.load_recipe(recipe(server, examples(), default="geo", retry={"max_attempts": 2}))
    server.add_fault("500", times=1, model="embedder")  # the examples' embedding: retried, then it succeeds
    result = await moa.run("What is the sum of 1 plus 2?", loaded, api_key="k")
    assert result.layers[0].answered_by == "math"
    assert [o.attempts for o in result.layers[0].outputs if o.model == "openai/embedder"] == [2, 1]
    assert len(server.embedding_requests()) == 3  # the provider's client did not retry on its own
    server.add_fault("400", times=1, model="embedder")  # not retried: the prompt has no embedding
    result = await moa.run("What is the sum of 1 plus 2?", loaded, api_key="k")
    (decision,) = result.layers[0].decisions
    assert (
        decision.option == "geo"
        and decision.reason.startswith("the prompt's embedding failed (RequestRejectedError: ")
        and decision.reason.endswith("; the default route")
    )
    assert decision.score is None
    without = moa.load_recipe(recipe(server, examples()))
    server.add_fault("400", times=1, model="embedder")
    with pytest.raises(moa.RouteError) as caught:
        await moa.run("What is the sum of 1 plus 2?", without, api_key="k")
    assert str(caught.value).startswith("layer 1 (route): the router chose no route (the examples' embeddings failed")
    assert str(caught.value).endswith("and there is no `default`")


async def test_examples_embedded_by_a_model_of_another_size_are_a_route_error(script: Any) -> None:
    server = script({"solver": "11"})
    rows = [{**row, "embedding": [0.5, 0.5], "embedded_with": "openai/embedder"} for row in examples()]
    with pytest.raises(moa.RouteError) as caught:
        await moa.run("What is the sum of 1 plus 2?", recipe(server, rows), api_key="k")
    assert str(caught.value) == (
        "layer 1 (route): router.examples: the examples' embeddings have 2 numbers but openai/embedder gave the "
        "prompt 64: embed both with one model (calibrate again)"
    )


def write(path: Path, rows: list[Any]) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize(("rows", "problem"), [
    ([{"prompt": "p", "scores": {"math": 1, "geo": 0, "code": 1}}],
     "example 1 scores 'code', which is no route here; routes: math, geo (the examples were made for another recipe: "
     "calibrate this one)"),
    ([{"prompt": "p", "scores": {"math": 1, "geo": 0}, "costs": {"Math": 1}}],
     "example 1 costs 'Math', which is no route here; routes: math, geo"),
    ([{"prompt": "p", "scores": {"math": 1}}],
     "no example scores the route(s) geo: the router could never tell how they do"),
    ([{"prompt": "p", "scores": {"math": 1.5, "geo": 0}}], "line 1: scores[\'math\'] is 1.5: a quality is from 0 to 1"),
    (["{not json"], "line 1 is not JSON"),
    ([{"prompt": "p", "scores": {"math": 1, "geo": 0}}, {"prompt": "", "scores": {"math": 1}}],
     "line 2: prompt: String should have at least 1 character"),
    ([{"prompt": "p", "scores": {"math": 1, "geo": 1}, "embedding": [1.0]}],
     "`embedding` needs `embedded_with`: the model that made it"),
    ([], "holds no example"),
])  # fmt: skip
def test_examples_that_do_not_match_the_recipe_are_refused_naming_the_file(
    tmp_path: Path, rows: list[Any], problem: str
) -> None:
    server_url = {"api_base": "http://127.0.0.1:9/v1"}
    file = write(tmp_path / "ex.jsonl", rows)
    config = {"name": "r", "defaults": server_url, "layers": [{"kind": "route", "routes": ROUTES,
                                                                 "router": router(file)}]}  # fmt: skip
    with pytest.raises(moa.RecipeError) as caught:
        moa.load_recipe(config)
    text = str(caught.value)
    assert "layers[0]" in text and problem in text and str(tmp_path) in text


def test_router_config_errors(tmp_path: Path) -> None:
    def refused(**fields: Any) -> str:
        layer = {"kind": "route", "routes": ROUTES, "router": router(examples(), **fields)}
        with pytest.raises(moa.RecipeError) as caught:
            moa.load_recipe({"name": "r", "layers": [layer]})
        return str(caught.value)

    assert "no file " + str(tmp_path / "missing.jsonl") in refused(examples=str(tmp_path / "missing.jsonl"))
    assert "`examples` is empty" in refused(examples=[])
    assert "takes no `system` prompt" in refused(embedding={"model": "openai/e", "system": "hi"})
    assert "`n` must be 1" in refused(embedding={"model": "openai/e", "n": 2})
    assert "`cost_weight` is 1 but no example gives a cost for math, geo" in refused(cost_weight=1)
    assert "greater than or equal to 1" in refused(k=0)
    mixed = [{**row, "embedding": [1.0] * (1 + i % 2), "embedded_with": "openai/e"} for i, row in enumerate(examples())]
    assert "the embeddings made with openai/e have different lengths (1, 2)" in refused(examples=mixed)
    with pytest.raises(moa.RecipeError, match=r"routes\[0\]\.when: `router: neighbours` does not read it"):
        routes = [{**ROUTES[0], "when": {"pattern": "x"}}, ROUTES[1]]
        moa.load_recipe({"name": "r", "layers": [{"kind": "route", "routes": routes, "router": router(examples())}]})


def test_a_relative_examples_path_is_read_from_the_recipes_folder_and_plan_shows_the_router(tmp_path: Path) -> None:
    write(tmp_path / "ex.jsonl", examples(costs={"math": 0.0, "geo": 0.0}))
    file = tmp_path / "r.yaml"
    layer = {"kind": "route", "routes": ROUTES, "router": router("ex.jsonl", cost_weight=0.5)}
    file.write_text(json.dumps({"name": "r", "layers": [layer]}))
    loaded = moa.load_recipe(file)
    assert len(loaded.layers[0].router.labelled) == 6
    lines = loaded.layers[0].describe(1)
    assert lines[0] == ("openai/embedder embeds the prompt; the route with the best quality on its 3 nearest of 6 "
                        "labelled examples less 0.5 x its cost (usd) answers it")  # fmt: skip
    assert lines[1:] == ["math", "geo", "no route chosen: an error (RouteError)"]
    assert loaded.calls_per_query == 2


async def test_a_priced_embedding_model_is_paid_and_counted_in_the_worst_case(script: Any) -> None:
    server = script({"gpt-4o-mini": "11"})
    routes = [
        {"name": "math", "agent": {"model": "openai/gpt-4o-mini"}},
        {"name": "geo", "agent": {"model": "openai/gpt-4o-mini"}},
    ]
    config = recipe(server, examples(), routes, router={"embedding": {"model": "openai/text-embedding-3-small"}})
    result = await moa.run("What is the sum of 1 plus 2?", config, api_key="k")
    embeds = [o for o in result.layers[0].outputs if o.model == "openai/text-embedding-3-small"]
    assert len(embeds) == 2 and all(o.cost_usd is not None and o.cost_usd > 0 for o in embeds)
    assert result.cost_usd == pytest.approx(sum(o.cost_usd or 0 for o in result.layers[0].outputs))
    (planned,) = moa.plan(config, "What is the sum of 1 plus 2?")
    rules = {**config["layers"][0], "router": {"type": "rules"}, "routes": [{**routes[0], "when": {"pattern": "x"}},
                                                                                routes[1]]}  # fmt: skip
    (alone,) = moa.plan({**config, "layers": [rules]}, "What is the sum of 1 plus 2?")
    assert planned.worst_case_usd is not None and alone.worst_case_usd is not None
    assert 0 < planned.worst_case_usd - alone.worst_case_usd < 1e-5
    assert planned.agents == ["openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai/text-embedding-3-small"]
