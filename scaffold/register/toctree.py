"""Editing PEFT's docs/source/_toctree.yml: an entry for a method's page in each list of method pages.

The edit is a line splice at the positions ruamel.yaml reports, then re-parsed to check it: a ruamel round-trip
dump would re-indent the file, whose sections use different indentations. Kept apart from `sites` so that
ruamel.yaml is imported only for trees that have docs (the PEFT sdist has none).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from scaffold.errors import ScaffoldError
from scaffold.register import _cst
from scaffold.register.tree import TOCTREE


# The method lists of the toctree are the sections that list at least two of these pages directly (a nested group
# such as LoRA and its variants lists only one).
_ANCHOR_PAGES = tuple(
    f"package_reference/{page}" for page in ("adalora", "boft", "ia3", "loha", "lokr", "lora", "oft", "vera")
)


@dataclass(frozen=True)
class _TocEntry:
    start: int  # first line (0-based) of the "- local: ..." item
    end: int  # one past its last non-blank line
    dash_col: int
    title: str
    local: str


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


def _load_toc(text: str) -> Any:
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        raise ScaffoldError(TOCTREE, f"is not valid YAML ({str(exc).splitlines()[0]})") from exc


def _sequences(node: Any) -> list[CommentedSeq]:
    out = []
    if isinstance(node, CommentedSeq):
        out.append(node)
        for item in node:
            out.extend(_sequences(item))
    elif isinstance(node, CommentedMap):
        for value in node.values():
            out.extend(_sequences(value))
    return out


def _entries(seq: CommentedSeq, lines: list[str]) -> list[_TocEntry]:
    """The items of a YAML sequence with their line ranges (ruamel gives each item's start line and column)."""
    out = []
    for i, item in enumerate(seq):
        line, col = seq.lc.item(i)
        dash = lines[line].index("-", 0, col + 1) if "-" in lines[line][: col + 1] else col - 2
        if i + 1 < len(seq):
            nxt = seq.lc.item(i + 1)[0]
        else:  # the last item runs until a line indented no deeper than its dash
            nxt = line + 1
            while nxt < len(lines) and (not lines[nxt].strip() or _indent(lines[nxt]) > dash):
                nxt += 1
        end = nxt
        while end > line + 1 and not lines[end - 1].strip():
            end -= 1
        title = str(item.get("title", "")) if isinstance(item, CommentedMap) else ""
        local = str(item.get("local", "")) if isinstance(item, CommentedMap) else ""
        out.append(_TocEntry(line, end, dash, title, local))
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _yaml_scalar(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._()+/-]*", text) and not text.endswith(" "):
        return text
    return json.dumps(text, ensure_ascii=False)


def _method_lists(data: Any) -> list[CommentedSeq]:
    return [
        seq
        for seq in _sequences(data)
        if len({it.get("local") for it in seq if isinstance(it, CommentedMap)}.intersection(_ANCHOR_PAGES)) >= 2
    ]


def listed_pages(source: str) -> set[str]:
    """Every `local:` page the toctree lists."""
    return {
        str(it.get("local"))
        for seq in _sequences(_load_toc(source))
        for it in seq
        if isinstance(it, CommentedMap) and it.get("local")
    }


def add_entry(text: str, local: str, title: str) -> str:
    """`text` with `- local: <local> / title: <title>` in every method list, at its sorted place by title."""
    targets = _method_lists(_load_toc(text))
    if not targets:
        raise ScaffoldError(
            TOCTREE, "expected a list of method pages (with `local: package_reference/lora`, .../loha, ...)"
        )
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    inserts: list[tuple[int, list[str]]] = []
    for seq in targets:
        entries = _entries(seq, lines)
        if any(e.local == local for e in entries):
            continue
        at = _cst.insertion_index([e.title for e in entries], title, _cst.plain_key)
        ref = entries[min(at, len(entries) - 1)]
        pad = " " * ref.dash_col
        block = [f"{pad}- local: {local}{newline}", f"{pad}  title: {_yaml_scalar(title)}{newline}"]
        line = entries[at].start if at < len(entries) else entries[-1].end
        inserts.append((line, block))
    for line, block in sorted(inserts, reverse=True):
        if line == len(lines) and lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        lines[line:line] = block
    new = "".join(lines)
    if local not in listed_pages(new):
        raise ScaffoldError(TOCTREE, "the new toctree entry did not parse back; not editing")
    return new


def remove_entry(text: str, local: str) -> str:
    """The inverse of `add_entry` (a list is never emptied)."""
    lines = text.splitlines(keepends=True)
    spans = []
    for seq in _sequences(_load_toc(text)):
        entries = _entries(seq, lines)
        if len(entries) > 1:
            spans += [(e.start, e.end) for e in entries if e.local == local]
    for start, end in sorted(spans, reverse=True):
        del lines[start:end]
    return "".join(lines)
