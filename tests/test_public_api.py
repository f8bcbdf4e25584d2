import moa


def test_public_names_are_pinned() -> None:
    assert sorted(moa.__all__) == sorted(
        [
            "Agent", "AgentOutput", "BadResponseError", "Budget", "BudgetExceeded", "CallError", "CallParams",
            # the call cache
            "CacheError", "CallCache",
            "CallbackError", "CallSite", "CallTimeoutError", "Completion", "ConfigError", "DeadlineExceeded", "Event",
            "Layer",
            "LayerPlan", "LayerResult", "Limiter", "MissingAPIKeyError", "MoAError", "MoAResult", "PromptError",
            "Provider", "ProviderError", "ProviderLimit", "ProviderUnavailableError", "QuorumError",
            "RateLimitedError", "Recipe", "RecipeError", "Request", "RequestRejectedError", "RetryPolicy",
            "RunError", "SelfMoA", "TemplateError", "UnpricedModelError", "Usage", "builtin_recipes",
            "load_recipe", "plan", "run", "run_sync",
            # stages: writing and registering a stage kind, and what stages find
            "Candidate", "Estimate", "EstimateContext", "Outcome", "Stage", "StageContext", "StageError", "Verdict",
            "VerificationError", "register_stage", "ExecutionError",
            # tools: agents that call functions
            "Tool", "ToolCall", "register_tool",
            # control: cascades and routers, their choices and their errors
            "Decision", "CascadeError", "RouteError",
        ]
    )  # fmt: skip
    for name in moa.__all__:
        assert hasattr(moa, name), name


def test_type_checking_imports_mirror_the_lazy_exports() -> None:
    """Type checkers read the TYPE_CHECKING block, `import moa` the lazy map: they name the same things."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(moa.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {
        alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == moa._EXPORTS
    assert sorted(moa.__all__) == sorted(moa._EXPORTS)


def test_error_tree_splits_config_from_runtime() -> None:
    for config in (moa.RecipeError, moa.TemplateError, moa.PromptError, moa.MissingAPIKeyError):
        assert issubclass(config, moa.ConfigError)
    for runtime in (moa.ProviderError, moa.QuorumError, moa.RateLimitedError, moa.CallTimeoutError):
        assert issubclass(runtime, moa.RunError)
    assert issubclass(moa.ConfigError, moa.MoAError) and issubclass(moa.RunError, moa.MoAError)
    assert not issubclass(moa.ConfigError, moa.RunError)


def test_importing_moa_does_not_import_litellm() -> None:
    import subprocess
    import sys

    code = "import moa, sys; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
