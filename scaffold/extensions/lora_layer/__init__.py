"""`kind: lora_layer`: a LoRA layer class for a base layer type PEFT's LoRA does not cover (see docs/lora_layer.md).

    spec (LoraLayerSpec) -> plan (expressions checked, code fragments) -> templates/lora_layer/ -> ruff
      --peft-root: src/peft/tuners/lora/<name>.py + a branch in `dispatch_default` + the export (libcst) + manifest
      --out:       lora_<name>.py for stock peft (`LoraConfig._register_custom_module`), its tests and an example

Like the rest of the generation path, nothing here imports torch; only the check that `base_layer` is importable
runs torch, in a subprocess (`base_type.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.extensions.lora_layer.base_type import check_base_type
from scaffold.extensions.lora_layer.plan import LoraLayerPlan, build_layer_plan
from scaffold.extensions.lora_layer.register import (
    LayerRegistration,
    check_collision,
    edited_files,
    manifest_path,
    plan_registration,
    plan_unregistration,
    read_manifest,
    write_manifest,
)
from scaffold.extensions.lora_layer.render import LayerLayout, layer_paths, render_layer
from scaffold.extensions.lora_layer.spec import LoraLayerSpec


__all__ = ["EXTENSION", "LoraLayerExtension", "LoraLayerPlan", "LoraLayerSpec", "build_layer_plan"]


def _spec_hash(spec_path: Path) -> str:
    from scaffold.pipeline import spec_hash

    return spec_hash(spec_path)


def _registration(plan: LoraLayerPlan) -> LayerRegistration:
    return LayerRegistration(name=plan.name, class_name=plan.class_name, base_path=plan.base_path)


def _stage(changeset: ChangeSet, files: dict[str, str], *, force: bool, what: str) -> None:
    for relpath, text in sorted(files.items()):
        current = changeset.read(relpath)
        if current is not None and current != text and not force:
            raise ScaffoldError(
                relpath, f"exists with different content; pass --force to overwrite ({what} was generated before?)"
            )
        changeset.write(relpath, text)


class LoraLayerExtension:
    kind = "lora_layer"
    spec_model = LoraLayerSpec

    def summary(self, spec: LoraLayerSpec, source: str) -> dict[str, Any]:
        plan = build_layer_plan(spec, source=source)
        base = check_base_type(spec, source)
        return {
            "name": plan.name,
            "kind": self.kind,
            "base_layer": plan.base_path,
            "layer_class": plan.class_name,
            "in_features": str(spec.in_features),
            "out_features": str(spec.out_features),
            "forward": "spec" if plan.forward_lines else "default (the base layer's forward with the delta weight)",
            "base_layer_check": base.note,
            "files_in_tree": sorted(layer_paths(plan, LayerLayout.PEFT_TREE).values()),
            "files_out": sorted(layer_paths(plan, LayerLayout.STANDALONE).values()),
            "registers": ["dispatch_default (src/peft/tuners/lora/layer.py)", "src/peft/tuners/lora/__init__.py"],
        }

    def generate_files_only(self, spec: LoraLayerSpec, spec_path: Path, out_dir: Path, *, force: bool) -> Any:
        from scaffold.pipeline import Generation

        source = str(spec_path)
        plan = build_layer_plan(spec, source=source)
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ScaffoldError(str(out_dir), "exists and is not a directory")
        base = check_base_type(spec, source)
        changeset = ChangeSet(out_dir)
        module = layer_paths(plan, LayerLayout.STANDALONE)["lora_layer/layer.py.j2"]
        files = render_layer(plan, LayerLayout.STANDALONE, spec_file=spec_path.name, existing=changeset.read(module))
        _stage(changeset, files, force=force, what=str(out_dir))
        notes = [
            base.note,
            f"use it with stock peft: config._register_custom_module({{{plan.base_path}: {plan.class_name}}})",
        ]
        headline = f"{plan.standalone_module}.{plan.class_name}"
        return Generation(plan.name, plan.title, headline, changeset, None, notes)

    def generate_into_tree(self, spec: LoraLayerSpec, spec_path: Path, peft_root: Path, *, force: bool) -> Any:
        from scaffold import register
        from scaffold.pipeline import Generation

        source = str(spec_path)
        plan = build_layer_plan(spec, source=source)
        root = Path(peft_root)
        register.detect_peft_tree(root)
        if not plan.in_torch:
            raise ScaffoldError(
                f"{source}: base_layer",
                f"{plan.base_path} is not under `torch`: PEFT's layer.py can only dispatch torch types without a new "
                "dependency; generate with --out and register it with LoraConfig._register_custom_module",
            )
        reg = _registration(plan)
        manifest = read_manifest(root, plan.name)
        check_collision(root, reg, manifest)  # also: no dispatch_default -> error
        changeset = ChangeSet(root)
        if manifest is not None and not force:
            edited = edited_files(changeset, manifest)
            if edited:
                raise ScaffoldError(edited[0], "edited since it was generated; use --force to overwrite it")
        base = check_base_type(spec, source)
        paths = layer_paths(plan, LayerLayout.PEFT_TREE)
        module = paths["lora_layer/layer.py.j2"]
        files = render_layer(plan, LayerLayout.PEFT_TREE, spec_file=spec_path.name, existing=changeset.read(module))
        _stage(changeset, files, force=force or manifest is not None, what=plan.name)
        notes = [base.note, *plan_registration(changeset, reg)]
        write_manifest(changeset, reg, sorted(files), _spec_hash(spec_path))
        headline = f"peft.tuners.lora.{plan.class_name}"
        return Generation(plan.name, plan.title, headline, changeset, None, notes)

    def remove_from_tree(self, name: str, peft_root: Path, *, force: bool) -> tuple[ChangeSet, list[str]] | None:
        root = Path(peft_root)
        if not (root / manifest_path(name)).is_file():
            return None
        changeset = ChangeSet(root)
        manifest = read_manifest(changeset, name)
        assert manifest is not None
        edited = edited_files(changeset, manifest)
        if edited and not force:
            raise ScaffoldError(edited[0], "edited since it was generated; use --force to remove it anyway")
        notes = plan_unregistration(changeset, manifest.registration)
        for rel in sorted(manifest.files):
            changeset.delete(rel)
        changeset.delete(manifest.relpath)
        return changeset, notes


EXTENSION = LoraLayerExtension()
