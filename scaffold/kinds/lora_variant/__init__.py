"""`kind: lora_variant`: a LoRA variant (a `LoraVariant` subclass switched on by `LoraConfig.use_<name>`).

See docs/lora_variant.md. The pieces: `spec` (the YAML model), `plan` (expressions checked, code fragments
computed), `templates/lora_variant/variant.py.j2` (the module), `sites` (libcst edits of PEFT's LoRA config, layer
mappings and test matrix, each with its inverse), `registration` (what the sites add, and the tree checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaffold.changeset import ChangeSet
from scaffold.core.kind import Kind
from scaffold.core.manifest import Manifest
from scaffold.kinds.lora_variant.sites import LORA_DIR, SITES, VariantRegistration, module_path
from scaffold.kinds.lora_variant.spec import LoraVariantSpec
from scaffold.register.tree import PeftTree
from scaffold.render.files import Layout


if TYPE_CHECKING:
    from scaffold.kinds.lora_variant.plan import VariantPlan


class LoraVariantKind(Kind):
    name = "lora_variant"
    spec_model = LoraVariantSpec
    registration_type = VariantRegistration
    sites = SITES

    def plan(
        self, spec: LoraVariantSpec, source: str, tree: PeftTree | None, templates: Path | None = None
    ) -> VariantPlan:
        # the planner and the registration are imported when a variant is planned, not when any spec is loaded
        from scaffold.kinds.lora_variant.plan import build_plan
        from scaffold.kinds.lora_variant.registration import replays_merged

        return build_plan(spec, source=source, replays_merged=replays_merged(tree), templates=templates)

    def templates(self, plan: VariantPlan, layout: Layout) -> dict[str, str]:
        return {"lora_variant/variant.py.j2": module_path(plan.name, standalone=layout is Layout.STANDALONE)}

    def context(self, plan: VariantPlan, layout: Layout) -> dict[str, Any]:
        from scaffold.kinds.lora_variant.plan import _doc

        return {
            "layer_module": "peft.tuners.lora.layer" if layout is Layout.STANDALONE else ".layer",
            "layer_imports": sorted(
                {*plan.layer_classes, "LoraVariant", *(["LoraLayer"] if plan.uses_constant_cache else [])}
            ),
            "merge_doc": _doc(plan.spec.merge or ""),
            "unmerge_doc": _doc(plan.spec.unmerge or ""),
            "forward_docs": {layer: _doc(plan.spec.forward_for(layer)) for layer in plan.layer_classes},
        }

    def headline(self, plan: VariantPlan, layout: Layout) -> str:
        return f"LoraConfig({plan.switch}=True)"

    def notes(self, plan: VariantPlan, layout: Layout) -> list[str]:
        if layout is Layout.PEFT_TREE:
            return []
        return [
            f"registering it in a PEFT tree (`new --peft-root`) also adds LoraConfig.{plan.switch} and the "
            f"`lora_variants` entries of {', '.join(plan.layer_classes)}"
        ]

    def registration(self, plan: VariantPlan) -> VariantRegistration:
        from scaffold.kinds.lora_variant.registration import registration_for

        return registration_for(plan)

    def manifest_path(self, method_name: str) -> str:
        return f"{LORA_DIR}/.peft-scaffold-{method_name}.json"

    def check_tree(
        self,
        tree: PeftTree,
        changeset: ChangeSet,
        plan: VariantPlan,
        reg: VariantRegistration,
        manifest: Manifest | None,
    ) -> None:
        from scaffold.kinds.lora_variant.registration import check_tree

        check_tree(tree, changeset, plan, reg, manifest)

    def summary(self, spec: LoraVariantSpec, source: str) -> dict[str, Any]:
        plan = self.plan(spec, source, None)
        reg = self.registration(plan)
        return {
            "name": plan.name,
            "kind": self.name,
            "config_field": f"LoraConfig.{plan.switch}",
            "variant_classes": plan.mapping_entries,
            "weights": {
                name: {"attr": f"lora_{plan.name}_{name}", "shape": weight.shape, "trainable": weight.trainable}
                for name, weight in plan.spec.weights.items()
            },
            "values": {v.name: "constant" if v.constant else "computed" for v in plan.values},
            "merge": plan.spec.merge is not None,
            "files": [module_path(plan.name)],
            "edits": [site.relpath for site in self.sites],
            "test_rows": list(reg.test_descriptions),
        }


KIND = LoraVariantKind()
