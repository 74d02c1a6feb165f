"""Reading a spec file: YAML -> `MethodSpec`, with every failure turned into one line naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scaffold.errors import ScaffoldError
from scaffold.spec.model import MethodSpec


def load_spec(path: Path) -> MethodSpec:
    """Read and validate the spec at `path`; raise `ScaffoldError` (exit 2) on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScaffoldError(str(path), "spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScaffoldError(str(path), f"cannot read spec ({exc})") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<spec>") -> MethodSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ScaffoldError(where, f"invalid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ScaffoldError(source, "a spec must be a YAML mapping (name: ..., weights: ..., ...)")
    return spec_from_data(data, source)


def spec_from_data(data: dict[str, Any], source: str = "<spec>") -> MethodSpec:
    try:
        return MethodSpec.model_validate(data)
    except ValidationError as exc:
        raise ScaffoldError(f"{source}: {_location(exc)}", _reason(exc)) from None


def _location(exc: ValidationError) -> str:
    error = exc.errors()[0]
    # pydantic adds the union member it tried ("str", "InitCall"...) to the path; a user never wrote those
    parts = [str(p) for p in error["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
    return ".".join(parts) or "spec"


def _reason(exc: ValidationError) -> str:
    error = exc.errors()[0]
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{message} (got {error.get('input')!r})"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message} (got {error.get('input')!r})"
    return message
