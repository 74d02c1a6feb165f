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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import __version__
from scaffold.changeset import ChangeSet, read_text, read_view
from scaffold.errors import ScaffoldError
from scaffold.register.method import MethodRegistration
from scaffold.register.tree import PeftTree


MANIFEST_NAME = ".peft-scaffold.json"
FORMAT = 1


def manifest_path(name: str) -> str:
    return f"src/peft/tuners/{name}/{MANIFEST_NAME}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
            "tool": "peft-scaffold",
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
    hashes = {}
    for rel in rels:
        content = changeset.read(rel)
        if content is None:
            raise ScaffoldError(rel, f"listed as generated but missing from {tree.root}", 1)
        hashes[rel] = sha256_text(content)
    manifest = Manifest(name=reg.name, spec_hash=spec_hash, registration=reg, files=hashes)
    changeset.write(manifest.relpath, manifest.to_json())
    return manifest


def read_manifest(root: Path | ChangeSet, name: str) -> Manifest | None:
    """The manifest of method `name` (from disk, or the pending view of a change set); None if there is none."""
    rel = manifest_path(name)
    text = read_view(root, rel)
    if text is None:
        return None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT or data.get("tool") != "peft-scaffold":
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        return Manifest(
            name=data["name"],
            spec_hash=data["spec_hash"],
            registration=_registration_from_data(data["registration"]),
            files=dict(data["files"]),
            tool_version=data.get("tool_version", ""),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ScaffoldError(rel, f"unreadable peft-scaffold manifest ({exc})") from exc


def edited_files(root: Path | ChangeSet, manifest: Manifest) -> list[str]:
    """Generated files that were changed or deleted since generation."""
    out = []
    for rel, digest in sorted(manifest.files.items()):
        if isinstance(root, ChangeSet):
            text = root.read(rel)
        else:
            path = Path(root) / rel
            text = read_text(path) if path.is_file() else None
        if text is None or sha256_text(text) != digest:
            out.append(rel)
    return out


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
