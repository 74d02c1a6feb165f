"""Rendering a kind's files: its templates with one context, then ruff, for every kind alike."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import jinja2

from scaffold.errors import ScaffoldError
from scaffold.render.format import format_sources
from scaffold.render.templates import environment


class Layout(str, Enum):
    """Where the generated files go."""

    PEFT_TREE = "peft-tree"  # inside a PEFT source tree (`new --peft-root`)
    STANDALONE = "standalone"  # into any directory, for stock peft (`new --out`)


_HEADER_YEAR = re.compile(r"^# Copyright (\d{4})-present", re.MULTILINE)


def header_year(existing: str | None) -> int | None:
    """The year in the licence header of a previously generated file, so re-generating keeps it."""
    match = _HEADER_YEAR.search(existing or "")
    return int(match.group(1)) if match else None


def render_files(
    paths: Mapping[str, str],
    context: Mapping[str, Any],
    *,
    read_existing: Callable[[str], str | None],
    first_party: tuple[str, ...] = (),
    templates: Path | None = None,
) -> dict[str, str]:
    """Render each template of `paths` ({template: output path}) with `context`, then format with ruff.

    `year` (the licence header's) is added to the context: the one of an earlier generation of these files, as
    `read_existing(output path)` gives them, else this year. `templates`: a directory whose files shadow the
    built-in templates of the same relative path (`--templates`).
    """
    env = environment(str(templates) if templates is not None else None)
    year = next((y for out in paths.values() if (y := header_year(read_existing(out))) is not None), None)
    full = {**context, "year": year or datetime.date.today().year}
    try:
        rendered = {out: env.get_template(name).render(**full) for name, out in paths.items()}
    except jinja2.TemplateSyntaxError as exc:  # an overriding template (the built-in ones are tested)
        raise ScaffoldError(
            f"{exc.filename or exc.name}:{exc.lineno}", f"template syntax error ({exc.message})"
        ) from None
    except jinja2.UndefinedError as exc:
        raise ScaffoldError(
            str(templates or "templates"), f"a template uses an unknown variable ({exc.message})"
        ) from None
    return format_sources(rendered, first_party=first_party)
