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
    search = [override_dir] if override_dir else []
    loader = jinja2.FileSystemLoader([*search, str(template_dir())])
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
