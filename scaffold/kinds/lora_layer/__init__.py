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
from scaffold.core.kind import Kind
from scaffold.core.manifest import Manifest
from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_layer.base_type import check_base_type
from scaffold.kinds.lora_layer.plan import LoraLayerPlan, build_layer_plan
from scaffold.kinds.lora_layer.register import SITES, LayerRegistration, check_collision
from scaffold.kinds.lora_layer.spec import LoraLayerSpec
from scaffold.register.tree import PeftTree
from scaffold.render.files import Layout


__all__ = ["KIND", "LoraLayerKind", "LoraLayerPlan", "LoraLayerSpec", "build_layer_plan"]


class LoraLayerKind(Kind):
    name = "lora_layer"
    spec_model = LoraLayerSpec
    registration_type = LayerRegistration
    sites = SITES

    def plan(
        self, spec: LoraLayerSpec, source: str, tree: PeftTree | None, templates: Path | None = None
    ) -> LoraLayerPlan:
        plan = build_layer_plan(spec, source=source)
        if tree is not None and not plan.in_torch:
            raise ScaffoldError(
                f"{source}: base_layer",
                f"{plan.base_path} is not under `torch`: PEFT's layer.py can only dispatch torch types without a new "
                "dependency; generate with --out and register it with LoraConfig._register_custom_module",
            )
        plan.notes.append(check_base_type(spec, source).note)
        return plan

    def templates(self, plan: LoraLayerPlan, layout: Layout) -> dict[str, str]:
        stem = plan.standalone_module
        if layout is Layout.PEFT_TREE:
            return {
                "lora_layer/layer.py.j2": f"src/peft/tuners/lora/{plan.name}.py",
                "lora_layer/test_layer.py.j2": f"tests/test_{stem}.py",
                "lora_layer/example.py.j2": f"examples/{stem}/{stem}_example.py",
            }
        return {
            "lora_layer/layer.py.j2": f"{stem}.py",
            "lora_layer/test_layer.py.j2": f"tests/test_{stem}.py",
            "lora_layer/example.py.j2": f"examples/{stem}_example.py",
        }

    def context(self, plan: LoraLayerPlan, layout: Layout) -> dict[str, Any]:
        return {"example_name": self.templates(plan, layout)["lora_layer/example.py.j2"].rsplit("/", 1)[-1]}

    def first_party(self, plan: LoraLayerPlan, layout: Layout) -> tuple[str, ...]:
        return () if layout is Layout.PEFT_TREE else (plan.standalone_module,)

    def headline(self, plan: LoraLayerPlan, layout: Layout) -> str:
        if layout is Layout.PEFT_TREE:
            return f"peft.tuners.lora.{plan.class_name}"
        return f"{plan.standalone_module}.{plan.class_name}"

    def notes(self, plan: LoraLayerPlan, layout: Layout) -> list[str]:
        if layout is Layout.PEFT_TREE:
            return list(plan.notes)
        return [
            *plan.notes,
            f"use it with stock peft: config._register_custom_module({{{plan.base_path}: {plan.class_name}}})",
        ]

    def registration(self, plan: LoraLayerPlan) -> LayerRegistration:
        return LayerRegistration(name=plan.name, class_name=plan.class_name, base_path=plan.base_path)

    def manifest_path(self, method_name: str) -> str:
        return f"src/peft/tuners/lora/.peft-scaffold-{self.name}-{method_name}.json"

    def check_tree(
        self,
        tree: PeftTree,
        changeset: ChangeSet,
        plan: LoraLayerPlan,
        reg: LayerRegistration,
        manifest: Manifest | None,
    ) -> None:
        check_collision(tree.root, reg, manifest)  # also: no dispatch_default -> error

    def summary(self, spec: LoraLayerSpec, source: str) -> dict[str, Any]:
        plan = build_layer_plan(spec, source=source)
        base = check_base_type(spec, source)
        return {
            "name": plan.name,
            "kind": self.name,
            "base_layer": plan.base_path,
            "layer_class": plan.class_name,
            "in_features": str(spec.in_features),
            "out_features": str(spec.out_features),
            "forward": "spec" if plan.forward else "default (the base layer's forward with the delta weight)",
            "base_layer_check": base.note,
            "files_in_tree": sorted(self.templates(plan, Layout.PEFT_TREE).values()),
            "files_out": sorted(self.templates(plan, Layout.STANDALONE).values()),
            "registers": [f"{site.name} ({site.relpath})" for site in self.sites],
        }


KIND = LoraLayerKind()
