"""The files of `kind: tuner`: the tuner package, its tests and an example, and the templates' variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaffold.kinds.tuner.example import example_context, example_model
from scaffold.plan import MethodPlan
from scaffold.plan.layers import TORCH_CLASSES
from scaffold.render.files import Layout, render_files


def paths_for(plan: MethodPlan, layout: Layout) -> dict[str, str]:
    """template name -> output path."""
    in_tree = layout is Layout.PEFT_TREE
    package = f"src/peft/tuners/{plan.name}" if in_tree else plan.name
    paths = {
        "tuner/__init__.py.j2": f"{package}/__init__.py",
        "tuner/config.py.j2": f"{package}/config.py",
        "tuner/layer.py.j2": f"{package}/layer.py",
        "tuner/model.py.j2": f"{package}/model.py",
        "tests/test_method.py.j2": f"tests/test_{plan.name}.py",
    }
    if example_model(plan) is not None:  # a tiny transformers model has layers the method adapts
        paths["examples/example.py.j2"] = f"examples/{plan.name}/{plan.name}_example.py"
        paths["examples/benchmark.py.j2"] = f"examples/{plan.name}/{plan.name}_benchmark.py"
        paths["examples/README.md.j2"] = f"examples/{plan.name}/README.md"
    if not in_tree:  # in a tree, the docs_page site writes it (when the tree has docs/)
        paths["docs/page.md.j2"] = f"docs/{plan.name}.md"
    return paths


def out_of_range_values(plan: MethodPlan) -> list[tuple[str, str]]:
    """One value just outside each bound, for the generated tests that check the config rejects it."""
    values = []
    for hp in plan.hyperparameters:
        step = 1 if hp.spec.type == "int" else 0.5
        for bound, offset in (("min", -step), ("gt", 0), ("max", step), ("lt", 0)):
            limit = getattr(hp.spec, bound)
            if limit is not None:
                value = limit + offset
                values.append((hp.name, repr(int(value)) if hp.spec.type == "int" else repr(float(value))))
        if hp.spec.choices is not None:
            values.append((hp.name, repr("not-" + "-".join(hp.spec.choices))))
    return values


def context(plan: MethodPlan, layout: Layout, *, registered_constants: bool) -> dict[str, Any]:
    """`registered_constants`: the tree has the method's own target-module constant in `peft.utils` (the
    `constants` site adds it); otherwise model.py reuses LoRA's or defines its own."""
    if registered_constants:
        mapping_import, mapping_name = plan.mapping_constant, plan.mapping_constant
    elif plan.lora_mapping:
        mapping_import = mapping_name = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"
    else:
        mapping_import, mapping_name = "", json.dumps(plan.target_modules)
    supported = sorted({TORCH_CLASSES[t] for t in plan.spec.layers})
    return {
        "exports": [plan.config_cls, plan.model_cls, plan.layer_cls]
        + [lc.family.class_name for lc in plan.layer_classes],
        "mapping_import": mapping_import,
        "mapping_name": mapping_name,
        "supported_text": ", ".join(f"`{s}`" for s in supported),
        "has_linear": any(lc.family.kind == "linear" for lc in plan.layer_classes),
        "package_import": f"peft.tuners.{plan.name}" if layout is Layout.PEFT_TREE else plan.name,
        "out_of_range": out_of_range_values(plan),
        "example_name": f"{plan.name}_example.py",
        **example_context(plan),
    }


def first_party(plan: MethodPlan, layout: Layout) -> tuple[str, ...]:
    return () if layout is Layout.PEFT_TREE else (plan.name,)


def render_method(
    plan: MethodPlan,
    *,
    layout: Layout = Layout.PEFT_TREE,
    spec_file: str = "spec.yaml",
    registered_constants: bool = False,
    year: int | None = None,
    templates: Path | None = None,
) -> dict[str, str]:
    """Every file of the method, rendered outside the pipeline (the golden and parity tests use it); `year`: the
    licence header's (default: this year)."""
    header = f"# Copyright {year}-present\n" if year else None
    variables = {
        **context(plan, layout, registered_constants=registered_constants),
        "p": plan,
        "spec_file": spec_file,
        "layout": layout.value,
    }
    return render_files(
        paths_for(plan, layout),
        variables,
        read_existing=lambda _: header,
        first_party=first_party(plan, layout),
        templates=templates,
    )


def render_docs_page(plan: MethodPlan, *, year: int | None = None, templates: Path | None = None) -> str:
    """The method's page in PEFT's docs format: `docs/source/package_reference/<name>.md` in a tree (the docs_page
    site writes it), `docs/<name>.md` with `--out`."""
    page = f"docs/{plan.name}.md"
    header = f"# Copyright {year}-present\n" if year else None
    variables = {**context(plan, Layout.PEFT_TREE, registered_constants=True), "p": plan, "spec_file": ""}
    rendered = render_files({"docs/page.md.j2": page}, variables, read_existing=lambda _: header, templates=templates)
    return rendered[page]
