"""Finding and loading the jinja2 templates, in a source checkout and in an installed wheel alike."""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import jinja2

from scaffold.resources import resource_dir


def template_dir() -> Path:
    return resource_dir("templates")


@cache
def environment(override_dir: str | None = None) -> jinja2.Environment:
    """The environment; with `override_dir` (`--templates DIR`), a template there shadows the built-in one of the
    same relative path (e.g. `_header.j2`, `tuner/layer.py.j2`), and every other template is the built-in one."""
    builtin = jinja2.FileSystemLoader(str(template_dir()))
    loader: jinja2.BaseLoader = builtin
    if override_dir is not None:
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(override_dir), builtin])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,  # a template typo must fail loudly, not render an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["wrap"] = lambda text, width: "\n".join(textwrap.wrap(" ".join(str(text).split()), width))
    env.filters["pyrepr"] = repr
    env.filters["tuple"] = tuple
    return env
