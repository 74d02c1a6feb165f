"""`kind: tuner`: a new PEFT method, src/peft/tuners/<name>/ (config, model, layer), its tests and an example.

    spec      scaffold/spec/model.py (`MethodSpec`)
    plan      scaffold/plan/ (`build_plan`; `registration_for`: names, target modules, PEFT test-matrix rows)
    files     `files` here, templates/tuner/, templates/tests/, templates/examples/
    sites     `sites` here: PeftType, exports, constants, test matrices, docs (the PEFT contributor checklist)
    also      `collision` (names another method uses), `doctor` (every method of a tree, hand-written ones too)

The planner still lives in scaffold/plan (it is the oldest kind); moving it under this package is the next step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from scaffold.core.kind import Kind
from scaffold.core.manifest import MANIFEST_NAME, Manifest
from scaffold.kinds.tuner import files
from scaffold.kinds.tuner.registration import MethodRegistration
from scaffold.kinds.tuner.sites import SITES
from scaffold.plan import MethodPlan, build_plan
from scaffold.render.files import Layout
from scaffold.spec.model import MethodSpec


class TunerKind(Kind):
    name = "tuner"
    spec_model = MethodSpec
    registration_type = MethodRegistration
    sites = SITES

    def plan(self, spec: MethodSpec, source: str, tree: Any, templates: Path | None = None) -> MethodPlan:
        return build_plan(spec, source=source)

    def templates(self, plan: MethodPlan, layout: Layout) -> dict[str, str]:
        return files.paths_for(plan, layout)

    def context(self, plan: MethodPlan, layout: Layout) -> dict[str, Any]:
        # in a tree, the `constants` site defines the method's own target-module mapping in peft.utils
        return files.context(plan, layout, registered_constants=layout is Layout.PEFT_TREE)

    def first_party(self, plan: MethodPlan, layout: Layout) -> tuple[str, ...]:
        return files.first_party(plan, layout)

    def headline(self, plan: MethodPlan, layout: Layout) -> str:
        return plan.config_cls

    def registration(self, plan: MethodPlan) -> MethodRegistration:
        from scaffold.plan.registration import registration_for

        # the docs_page site writes the page the templates render (templates/docs/page.md.j2)
        return dataclasses.replace(registration_for(plan), docs_page=files.render_docs_page(plan))

    def manifest_path(self, method_name: str) -> str:
        return f"src/peft/tuners/{method_name}/{MANIFEST_NAME}"

    def check_tree(
        self, tree: Any, changeset: Any, plan: MethodPlan, reg: MethodRegistration, manifest: Manifest | None
    ) -> None:
        from scaffold.kinds.tuner.collision import check_collision

        check_collision(tree, reg, manifest)

    def summary(self, spec: MethodSpec, source: str) -> dict[str, Any]:
        plan = build_plan(spec, source=source)
        summary = {
            "name": plan.name,
            "kind": self.name,
            "title": plan.title,
            "peft_type": plan.peft_type,
            "prefix": plan.prefix,
            "config_class": plan.config_cls,
            "model_class": plan.model_cls,
            "layer_classes": [plan.layer_cls] + [lc.family.class_name for lc in plan.layer_classes],
            "layer_types": list(plan.spec.layers),
            "hyperparameters": {hp.name: f"{hp.annotation} = {hp.default}" for hp in plan.hyperparameters},
            "weights": {
                w.name: {"attr": w.attr, "shape": w.shape_code, "trainable": w.trainable}
                # computed once in update_layer by an init expression
                | ({"computed": w.init_expr} if w.init_expr is not None else {})
                | ({"dtype": w.dtype} if w.dtype != "float" else {})
                | ({"persistent": False} if not w.persistent else {})
                | (
                    {"shared": f"held once per adapter by the model, sized for the largest layer{w.slice_code}"}
                    if w.shared
                    else {}
                )
                for w in plan.weights
            },
            "forwards": plan.forwards_by_layer_type,
            "files": sorted(files.paths_for(plan, Layout.PEFT_TREE).values()),
            "registers": [site.name for site in SITES],
        }
        if not plan.mergeable:
            summary["mergeable"] = "no: merge_adapter / merge_and_unload raise; adapters apply in order"
        return summary


KIND = TunerKind()
