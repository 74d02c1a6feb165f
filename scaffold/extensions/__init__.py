"""Spec kinds beyond `tuner`: extensions of PEFT's LoRA rather than new tuners.

Each kind (`lora_variant`, `lora_layer`) lives in its own subpackage with its own spec model, plan, templates
(`templates/<kind>/`) and registry sites, and plugs into the pipeline through `Extension`. The pipeline and the
CLI dispatch on the spec's `kind` and know nothing else about a kind.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel


if TYPE_CHECKING:
    from scaffold.changeset import ChangeSet
    from scaffold.pipeline import Generation


class Extension(Protocol):
    kind: str
    spec_model: type[BaseModel]

    def summary(self, spec: Any, source: str) -> dict[str, Any]:
        """What `check` prints: validates the spec fully (raising ScaffoldError) and describes the output."""
        ...

    def generate_files_only(self, spec: Any, spec_path: Path, out_dir: Path, *, force: bool) -> Generation: ...

    def generate_into_tree(self, spec: Any, spec_path: Path, peft_root: Path, *, force: bool) -> Generation: ...

    def remove_from_tree(self, name: str, peft_root: Path, *, force: bool) -> tuple[ChangeSet, list[str]] | None:
        """Undo `generate_into_tree` for `name`, or None when `name` is not a method of this kind in the tree."""
        ...


# kind -> module that defines `EXTENSION`; imported lazily so a tuner spec never pays for them
_MODULES = {
    "lora_variant": "scaffold.extensions.lora_variant",
    "lora_layer": "scaffold.extensions.lora_layer",
}


def extension_kinds() -> list[str]:
    return sorted(_MODULES)


def get_extension(kind: str) -> Extension | None:
    module_name = _MODULES.get(kind)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # a kind announced but not built yet
        raise
    extension: Extension = module.EXTENSION
    return extension


def available_extensions() -> list[Extension]:
    return [ext for kind in extension_kinds() if (ext := get_extension(kind)) is not None]
