"""The manifest `remove` works from: `src/peft/tuners/<name>/.peft-scaffold.json`.

It lives inside the generated package (so it goes away with it) and holds:

    {
      "format": 1,
      "tool": "peft-scaffold", "tool_version": "0.1.0",
      "name": "mylora",
      "spec_hash": "<sha256 of the spec, as the generator computes it>",
      "registration": {<the MethodRegistration fields>},
      "files": {"src/peft/tuners/mylora/__init__.py": "<sha256 of the generated text>", ...}
    }

`files` lists every file the generator created (not the registry edits: those are undone by the sites' inverse
transforms). A file whose hash no longer matches was edited since generation; `remove` refuses unless forced.

The other spec kinds (`lora_variant`, `lora_layer`) keep manifests of the same shape under their own paths, with a
`kind` key and their own registration fields; all three hash, read and check files with the helpers here
(`hash_generated`, `load_manifest`, `changed_files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from scaffold import __version__
from scaffold.changeset import ChangeSet, read_view
from scaffold.errors import ScaffoldError
from scaffold.register.method import MethodRegistration
from scaffold.register.tree import PeftTree


MANIFEST_NAME = ".peft-scaffold.json"
FORMAT = 1
TOOL = "peft-scaffold"

T = TypeVar("T")


def manifest_path(name: str) -> str:
    return f"src/peft/tuners/{name}/{MANIFEST_NAME}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- shared by the three spec kinds ----------------------------------------------------------------------------------


def hash_generated(changeset: ChangeSet, rels: Iterable[str], where: str | Path) -> dict[str, str]:
    """{relpath: sha256} of the generated files `rels` as the change set holds them. A listed file the change set
    does not have is an error (the work failed, exit 1) naming it and `where` (the tree)."""
    hashes = {}
    for rel in rels:
        text = changeset.read(rel)
        if text is None:
            raise ScaffoldError(rel, f"listed as generated but missing from {where}", 1)
        hashes[rel] = sha256_text(text)
    return hashes


def load_manifest(
    root: Path | ChangeSet,
    rel: str,
    build: Callable[[dict[str, Any]], T],
    *,
    kind: str | None,
    format_version: int = FORMAT,
) -> T | None:
    """The manifest at `rel` (from disk, or the pending view of a change set), as `build` makes it from the JSON
    object; None if there is no such file. The object must be a peft-scaffold manifest of `format_version`, and of
    `kind` unless that is None (tuner manifests have no `kind` key). Anything unreadable, including a key `build`
    misses or a value of the wrong type, is one `ScaffoldError` naming `rel`."""
    text = read_view(root, rel)
    if text is None:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != format_version or data.get("tool") != TOOL:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        if kind is not None and data.get("kind") != kind:
            raise ValueError(f"not a {kind} manifest (kind {data.get('kind')!r})")
        return build(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScaffoldError(rel, f"unreadable peft-scaffold manifest ({exc})") from exc


def changed_files(root: Path | ChangeSet, files: Mapping[str, str]) -> list[str]:
    """Of `files` ({relpath: sha256}), those changed or deleted since they were hashed, sorted."""
    out = []
    for rel, digest in sorted(files.items()):
        text = read_view(root, rel)
        if text is None or sha256_text(text) != digest:
            out.append(rel)
    return out


@dataclass(frozen=True)
class Manifest:
    name: str
    spec_hash: str
    registration: MethodRegistration
    files: dict[str, str]  # relpath -> sha256
    tool_version: str = __version__

    @property
    def relpath(self) -> str:
        return manifest_path(self.name)

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "tool": TOOL,
            "tool_version": self.tool_version,
            "name": self.name,
            "spec_hash": self.spec_hash,
            "registration": _registration_to_data(self.registration),
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_manifest(
    changeset: ChangeSet, tree: PeftTree, reg: MethodRegistration, files: Iterable[str], *, spec_hash: str
) -> Manifest:
    """Record the generated `files` (as they are in the change set) in the method's manifest, written into the
    change set. A docs page the registrar creates in the same change set is recorded too."""
    rels = list(files)
    page = f"docs/source/package_reference/{reg.name}.md"
    if page not in rels and any(c.relpath == page and c.action == "create" for c in changeset.changes):
        rels.append(page)
    hashes = hash_generated(changeset, rels, tree.root)
    manifest = Manifest(name=reg.name, spec_hash=spec_hash, registration=reg, files=hashes)
    changeset.write(manifest.relpath, manifest.to_json())
    return manifest


def read_manifest(root: Path | ChangeSet, name: str) -> Manifest | None:
    """The manifest of method `name` (from disk, or the pending view of a change set); None if there is none."""
    return load_manifest(root, manifest_path(name), _manifest_from_data, kind=None)


def _manifest_from_data(data: dict[str, Any]) -> Manifest:
    return Manifest(
        name=data["name"],
        spec_hash=data["spec_hash"],
        registration=_registration_from_data(data["registration"]),
        files=dict(data["files"]),
        tool_version=data.get("tool_version", ""),
    )


def edited_files(root: Path | ChangeSet, manifest: Manifest) -> list[str]:
    """Generated files that were changed or deleted since generation."""
    return changed_files(root, manifest.files)


def _registration_to_data(reg: MethodRegistration) -> dict[str, Any]:
    return dataclasses.asdict(reg)


def _registration_from_data(data: dict[str, Any]) -> MethodRegistration:
    known = {f.name for f in dataclasses.fields(MethodRegistration)}
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs["exported"] = tuple(kwargs.get("exported", ()))
    kwargs["test_cases"] = tuple(tuple(row) for row in kwargs.get("test_cases", ()))
    kwargs["multiple_active_adapters_cases"] = tuple(
        tuple(row) for row in kwargs.get("multiple_active_adapters_cases", ())
    )
    return MethodRegistration(**kwargs)
