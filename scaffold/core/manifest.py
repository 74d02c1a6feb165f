"""The manifest `remove` works from: one JSON file per generated method, of every kind.

Each kind says where it lives (`Kind.manifest_path`: inside the tuner package for `kind: tuner`, next to PEFT's LoRA
modules for the LoRA kinds). It holds:

    {
      "format": 1,
      "tool": "peft-scaffold", "tool_version": "0.1.0",
      "kind": "tuner",
      "name": "mylora",
      "spec_hash": "<sha256 of the spec file>",
      "registration": {<the kind's registration, as its `to_data()` gives it>},
      "files": {"src/peft/tuners/mylora/__init__.py": "<sha256 of the generated text>", ...}
    }

`files` lists every file the generator created, and the files a site created (a docs page), not the registry
edits: those are undone by the sites' inverses. A file whose hash no longer matches was edited since generation;
`remove` and a re-generation refuse it unless forced (`check_unedited`). A manifest without `kind` (written before
kinds shared this format) is a tuner's; one without `registration` keeps it at the top level (`kind: lora_layer`
then).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scaffold import __version__
from scaffold.changeset import ChangeSet, read_view
from scaffold.errors import ScaffoldError


MANIFEST_NAME = ".peft-scaffold.json"
FORMAT = 1
TOOL = "peft-scaffold"


class ManifestKind(Protocol):
    """What the manifest needs to know of a kind (see `scaffold.core.kind.Kind`)."""

    name: str

    def manifest_path(self, method_name: str) -> str: ...

    def registration_from_data(self, data: dict[str, Any]) -> Any: ...


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_hash(spec_path: Path) -> str:
    return hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    kind: str
    name: str
    spec_hash: str
    registration: Any  # the kind's registration object; `to_data()` gives its JSON
    files: dict[str, str]  # relpath -> sha256
    relpath: str
    tool_version: str = __version__

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "tool": TOOL,
            "tool_version": self.tool_version,
            "kind": self.kind,
            "name": self.name,
            "spec_hash": self.spec_hash,
            "registration": self.registration.to_data(),
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(data, indent=2) + "\n"

    def edited_files(self, root: Path | ChangeSet) -> list[str]:
        """Generated files changed or deleted since generation, sorted."""
        out = []
        for rel, digest in sorted(self.files.items()):
            text = read_view(root, rel)
            if text is None or sha256_text(text) != digest:
                out.append(rel)
        return out

    def check_unedited(self, root: Path | ChangeSet, *, force: bool, verb: str) -> None:
        """The edited-files guard: refuse to `verb` ("overwrite", "remove") a generated file edited since."""
        edited = self.edited_files(root)
        if edited and not force:
            raise ScaffoldError(edited[0], f"edited since it was generated; use --force to {verb} it anyway")


def make_manifest(
    changeset: ChangeSet, kind: ManifestKind, reg: Any, files: Iterable[str], *, spec_hash: str
) -> Manifest:
    """The manifest of `files` as the change set holds them (each must be there: else exit 1 naming it)."""
    hashes = {}
    for rel in files:
        text = changeset.read(rel)
        if text is None:
            raise ScaffoldError(rel, f"listed as generated but missing from {changeset.root}", 1)
        hashes[rel] = sha256_text(text)
    return Manifest(kind.name, reg.name, spec_hash, reg, hashes, kind.manifest_path(reg.name))


def read_manifest(root: Path | ChangeSet, kind: ManifestKind, name: str) -> Manifest | None:
    """The manifest of `kind`'s method `name` (from disk, or the pending view of a change set); None if there is
    none. Anything unreadable, including a key missing or a value of the wrong type, is one `ScaffoldError`
    naming the file."""
    rel = kind.manifest_path(name)
    text = read_view(root, rel)
    if text is None:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT or data.get("tool") != TOOL:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        if data.get("kind", "tuner") != kind.name:
            raise ValueError(f"not a {kind.name} manifest (kind {data.get('kind')!r})")
        # lora_layer manifests written before the kinds shared this format kept the registration at the top level
        registration = kind.registration_from_data(data.get("registration", data))
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError(f"`files` must be an object, got {type(files).__name__}")
        return Manifest(
            kind.name, data["name"], data["spec_hash"], registration, dict(files), rel, data.get("tool_version", "")
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ScaffoldError(rel, f"unreadable peft-scaffold manifest ({exc})") from exc
