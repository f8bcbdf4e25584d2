"""Tools: agents that call functions (``python``, ``ask``, registered functions) in a loop before they answer.

``run_loop`` is one answer of an agent with tools (every model call through
the call pipeline); ``run_tool`` runs one function call; ``loop_worst_case``
bounds what an answer can cost, for budgets and ``moa.plan``.  Stages reach
all of it through ``StageContext.call``: a call whose spec has tools is a loop.
"""

from .calls import QUESTION_CHARS, RESULT_CHARS, RecipeRunner, ToolRuntime, cut, definitions, run_tool
from .loop import run_loop, tool_runtime
from .worst import RecipeCost, answer_worst_case, loop_worst_case

__all__ = [
    "QUESTION_CHARS",
    "RESULT_CHARS",
    "RecipeCost",
    "RecipeRunner",
    "ToolRuntime",
    "answer_worst_case",
    "cut",
    "definitions",
    "loop_worst_case",
    "run_loop",
    "run_tool",
    "tool_runtime",
]
