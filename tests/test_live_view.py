"""The live view renders states, totals and the streamed answer (recorded console)."""

from __future__ import annotations

import io

from rich.console import Console

import moa
from moa import RateLimitedError
from moa.cli.live import LiveView
from moa.testing import FakeProvider

RECIPE = {
    "name": "view",
    "retry": {"initial_backoff_s": 0, "max_backoff_s": 0},
    "layers": [
        {
            "kind": "propose",
            "agents": [{"model": "openai/a", "name": "alpha"}, {"model": "openai/b", "name": "beta", "n": 2}],
        },
        {"kind": "aggregate", "agents": [{"model": "openai/c", "name": "judge"}]},
    ],
}


def console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=140, record=True, color_system=None)


def test_queued_running_retrying_done_and_totals() -> None:
    recipe = moa.load_recipe(RECIPE)
    view = LiveView(recipe, console(), stream=False)
    first = view.tree()
    rendered = _render(first)
    assert "alpha" in rendered and "beta #1" in rendered and "beta #2" in rendered and "judge" in rendered
    assert rendered.count("queued") == 4
    site = moa.CallSite(layer=1, agent=0, sample=0, agent_name="alpha", model="openai/a")
    view.on_event(moa.Event("call_started", layer=1, site=site, attempt=1))
    assert "running" in _render(view.tree())
    view.on_event(moa.Event("call_retried", layer=1, site=site, attempt=1, error=RateLimitedError("429"), delay_s=2))
    assert "retrying 2/4 in 2.0 s" in _render(view.tree())


def test_full_run_then_streamed_answer() -> None:
    recipe = moa.load_recipe(RECIPE)
    out = console()
    fake = FakeProvider(replies={"openai/b": [RateLimitedError("slow", retry_after=0.0), "beta says hi"]})
    view = LiveView(recipe, out, stream=True)
    with view:
        result = moa.run_sync("Q", recipe, provider=fake, on_event=view.on_event, on_token=view.on_token)
    final = _render(view.__rich__())
    assert final.count("done") == 4 and "calls 4/4" in final and "failed 0" in final
    printed = out.file.getvalue()  # type: ignore[attr-defined]
    assert "Answer" in printed and result.output in printed
    assert result.layers[0].outputs[1].attempts == 2


def _render(renderable: object) -> str:
    c = Console(file=io.StringIO(), width=140, color_system=None)
    c.print(renderable)
    return c.file.getvalue()  # type: ignore[attr-defined]
