"""Reading a spec file: YAML -> `MethodSpec`, with every failure turned into one line naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scaffold.errors import ScaffoldError


# Hostile input stays cheap: a spec is a few KB of YAML, a few levels deep.
MAX_SPEC_BYTES = 256 * 1024
MAX_YAML_DEPTH = 50  # nested mappings and lists
MAX_YAML_NODES = 50_000  # scalars, mappings and lists together
MAX_NAME_LENGTH = 40  # a method name becomes package, module, class and test file names


def load_spec(path: Path) -> Any:
    """Read and validate the spec at `path`; raise `ScaffoldError` (exit 2) on any problem."""
    name = Path(path).name
    if not name.isprintable():  # the name is written into a comment of every generated file
        raise ScaffoldError(repr(str(path)), "the spec file name has control characters (a line break?); rename it")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise ScaffoldError(str(path), "spec file not found") from None
    except OSError as exc:
        raise ScaffoldError(str(path), f"cannot read spec ({exc.strerror or exc})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise ScaffoldError(str(path), f"spec file is too large (more than {MAX_SPEC_BYTES // 1024} KiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScaffoldError(str(path), f"cannot read spec (not UTF-8: {exc.reason} at byte {exc.start})") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<spec>") -> Any:
    try:
        _check_shape(text, source)
        data = yaml.load(text, Loader=_Loader)  # a safe loader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ScaffoldError(where, f"invalid YAML ({problem})") from None
    except RecursionError:
        raise ScaffoldError(source, f"YAML nested too deeply (at most {MAX_YAML_DEPTH} levels)") from None
    if not isinstance(data, dict):
        raise ScaffoldError(source, "a spec must be a YAML mapping (name: ..., weights: ..., ...)")
    name = data.get("name")
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"{source}: name", f"too long ({len(name)} characters; at most {MAX_NAME_LENGTH})")
    return spec_from_data(data, source)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_shape(text: str, source: str) -> None:
    """Refuse anchors and aliases (a few KB of aliases expand to billions of nodes: "billion laughs"), and bound
    the depth and the number of nodes, from the parser's events, before anything is built."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ScaffoldError(
                f"{source}:{event.start_mark.line + 1}", "YAML anchors and aliases (&name, *name) are not supported"
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ScaffoldError(
                    f"{source}:{event.start_mark.line + 1}",
                    f"YAML nested too deeply (at most {MAX_YAML_DEPTH} levels)",
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise ScaffoldError(source, f"spec has too many YAML nodes (at most {MAX_YAML_NODES})")


def spec_from_data(data: dict[str, Any], source: str = "<spec>") -> Any:
    """Validate `data` with the spec model of its `kind` (`tuner` by default; see `scaffold.kinds`)."""
    from scaffold.kinds import DEFAULT_KIND, kind_of

    model = kind_of(data.get("kind", DEFAULT_KIND), source).spec_model
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = _main_error(exc.errors(), data)
        raise ScaffoldError(f"{source}: {_location(error, data)}", _reason(error)) from None


def _user_path(error: Any, data: Any) -> tuple[list[tuple[str, Any]], int | None]:
    """The part of a pydantic location the user wrote (("key" | "index", part) into `data`), and the position in
    the location of the first union-member tag pydantic adds ("str", "InitCall", "literal[...]"), if any."""
    node = data
    path: list[tuple[str, Any]] = []
    first_tag = None
    loc = error["loc"]
    for position, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(("key", part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(("index", part))
            node = node[part]
        elif error["type"] == "missing" and position == len(loc) - 1:
            path.append(("key", part))
        elif first_tag is None:
            first_tag = position
    return path, first_tag


def _main_error(errors: list[Any], data: Any) -> Any:
    """The error to report: the first one, or, when it comes from one member of a union (e.g. an init given as a
    mapping, tried as a name first), the error of the member that got furthest into what the user wrote."""
    first = errors[0]
    _, tag = _user_path(first, data)
    if tag is None:
        return first
    prefix = first["loc"][:tag]
    same_union = [e for e in errors if e["loc"][:tag] == prefix and len(e["loc"]) > tag]
    return max(same_union, key=lambda e: len(_user_path(e, data)[0]))


def _location(error: Any, data: Any) -> str:
    text = ""
    for kind, part in _user_path(error, data)[0]:
        text += f"[{part}]" if kind == "index" else f".{_show(part)}"
    field = getattr(error.get("ctx", {}).get("error"), "field", None)  # a `FieldError` names its sub-field
    if field:
        text += f".{_show(field)}"
    return text.lstrip(".") or "spec"


def _show(key: Any) -> str:
    """A key as written, or quoted when it is empty or holds spaces or control characters (one line, visible);
    cut short when long."""
    text = str(key)
    shown = text if text and text.isprintable() and " " not in text else repr(key)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if kind == "literal_error" or kind.endswith("_type") or kind.endswith("_parsing"):
        got = repr(error.get("input"))
        return f"{message} (got {got if len(got) <= 80 else got[:77] + '...'})"
    return message
