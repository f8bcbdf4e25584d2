"""Prompt templates: Jinja2, sandboxed, strict, compiled and checked at load time.

A template turns the previous layer's outputs into the block injected into an
aggregating agent's system message.  It is compiled and its variables checked
when the recipe loads, so a typo fails before any paid call.  Jinja errors are
translated into ``TemplateError`` here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from moa._errors import TemplateError
from moa._resources import builtin_names, data_dir

#: Variables a template may use, and what they hold.
VARIABLES = {
    "responses": "list of the previous layer's successful outputs, in agent order",
    "layer": "1-based index of the layer being prompted",
    "step": "1-based step of an `aggregate_seq` layer (0 in other layers)",
}
TEMPLATE_SUFFIX = ".j2"

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class CompiledTemplate:
    """A checked template, ready to render."""

    source: str  # the file it came from
    template: jinja2.Template

    def render(self, *, responses: list[str], layer: int, step: int = 0) -> str:
        try:
            return self.template.render(responses=responses, layer=layer, step=step).strip()
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"template {self.source} tried something unsafe: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.source} failed to render: {exc}") from exc


def is_file_reference(value: str) -> bool:
    """Whether a template reference names a file rather than a built-in template."""
    return "/" in value or "\\" in value or Path(value).suffix != ""


def resolve_reference(value: str, base_dir: str | Path | None) -> str:
    """Make a file reference absolute (relative to the recipe's folder); keep built-in names."""
    if not is_file_reference(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    return str(path.resolve())


def load(reference: str) -> CompiledTemplate:
    """Find, compile and check a template by built-in name or absolute path."""
    if is_file_reference(reference):
        path = Path(reference)
    else:
        path = data_dir("prompts") / f"{reference}{TEMPLATE_SUFFIX}"
        if not path.is_file():
            known = ", ".join(builtin_names("prompts", TEMPLATE_SUFFIX))
            raise TemplateError(f"no built-in template named {reference!r} (built-in: {known})")
    if not path.is_file():
        raise TemplateError(f"template file {path} does not exist")
    stat = path.stat()
    return _compile(str(path), stat.st_mtime_ns, stat.st_size)


def compile_text(text: str, source: str) -> CompiledTemplate:
    """Compile and check template text (``source`` names it in errors)."""
    try:
        parsed = _ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {source}, line {exc.lineno}: {exc.message}") from exc
    used = meta.find_undeclared_variables(parsed)
    unknown = sorted(used - VARIABLES.keys())
    if unknown:
        allowed = ", ".join(sorted(VARIABLES))
        raise TemplateError(f"template {source} uses unknown variable(s) {', '.join(unknown)}; available: {allowed}")
    if "responses" not in used:
        raise TemplateError(
            f"template {source} never uses `responses`, so the previous layer's outputs would not reach the model"
        )
    compiled = CompiledTemplate(source=source, template=_ENV.from_string(text))
    # A trial render with stand-in answers: sandbox violations and bad attribute access fail now,
    # at load time, not in the middle of a paid run.
    compiled.render(responses=["<answer 1>", "<answer 2>"], layer=2, step=1)
    return compiled


@lru_cache(maxsize=64)
def _compile(path: str, _mtime_ns: int, _size: int) -> CompiledTemplate:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from exc
    return compile_text(text, path)
