"""Which files a method generates, where they go, and their rendered text."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from enum import Enum

from scaffold.plan import MethodPlan
from scaffold.plan.layers import TORCH_CLASSES
from scaffold.render.format import format_sources
from scaffold.render.templates import environment


class Layout(str, Enum):
    """Where the generated files go."""

    PEFT_TREE = "peft-tree"  # src/peft/tuners/<name>/, tests/test_<name>.py, examples/<name>/
    STANDALONE = "standalone"  # <name>/, tests/test_<name>.py, examples/<name>_example.py (for --out)


@dataclass
class GeneratedFiles:
    """Rendered files keyed by path relative to the output root."""

    files: dict[str, str]
    package_dir: str
    test_file: str

    def __iter__(self):
        return iter(sorted(self.files.items()))


def paths_for(plan: MethodPlan, layout: Layout) -> dict[str, str]:
    """template name -> output path."""
    package = f"src/peft/tuners/{plan.name}" if layout is Layout.PEFT_TREE else plan.name
    example = (
        f"examples/{plan.name}/{plan.name}_example.py"
        if layout is Layout.PEFT_TREE
        else f"examples/{plan.name}_example.py"
    )
    return {
        "tuner/__init__.py.j2": f"{package}/__init__.py",
        "tuner/config.py.j2": f"{package}/config.py",
        "tuner/layer.py.j2": f"{package}/layer.py",
        "tuner/model.py.j2": f"{package}/model.py",
        "tests/test_method.py.j2": f"tests/test_{plan.name}.py",
        "examples/example.py.j2": example,
    }


_HEADER_YEAR = re.compile(r"^# Copyright (\d{4})-present", re.MULTILINE)


def header_year(existing: str | None) -> int | None:
    """The year in the licence header of a previously generated file, so re-generating keeps it."""
    match = _HEADER_YEAR.search(existing or "")
    return int(match.group(1)) if match else None


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


def render_method(
    plan: MethodPlan,
    *,
    layout: Layout = Layout.PEFT_TREE,
    spec_file: str = "spec.yaml",
    registered_constants: bool = False,
    template_override_dir: str | None = None,
    year: int | None = None,
) -> GeneratedFiles:
    """Render every file of the method. `registered_constants`: the tree has the method's own target-module
    constant in `peft.utils` (the full registrar adds it); otherwise model.py reuses LoRA's or defines its own."""
    env = environment(template_override_dir)
    if registered_constants:
        mapping_import, mapping_name = plan.mapping_constant, plan.mapping_constant
    elif plan.lora_mapping:
        mapping_import = mapping_name = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"
    else:
        mapping_import, mapping_name = "", json.dumps(plan.target_modules)
    supported = sorted({TORCH_CLASSES[t] for t in plan.spec.layers})
    context = {
        "p": plan,
        "spec_file": spec_file,
        "exports": [plan.config_cls, plan.model_cls, plan.layer_cls]
        + [lc.family.class_name for lc in plan.layer_classes],
        "mapping_import": mapping_import,
        "mapping_name": mapping_name,
        "supported_text": ", ".join(f"`{s}`" for s in supported),
        "has_linear": any(lc.family.kind == "linear" for lc in plan.layer_classes),
        "package_import": f"peft.tuners.{plan.name}" if layout is Layout.PEFT_TREE else plan.name,
        "layout": layout.value,
        # the licence header's year: given (kept from an earlier generation), else this year
        "year": year or datetime.date.today().year,
        "out_of_range": out_of_range_values(plan),
        "example_name": f"{plan.name}_example.py",
    }
    paths = paths_for(plan, layout)
    rendered = {out: env.get_template(name).render(**context) for name, out in paths.items()}
    if not mapping_import:
        model_path = paths["tuner/model.py.j2"]
        rendered[model_path] = rendered[model_path].replace("from peft.utils import \n", "")
    formatted = format_sources(rendered, first_party=() if layout is Layout.PEFT_TREE else (plan.name,))
    return GeneratedFiles(
        files=formatted,
        package_dir=paths["tuner/__init__.py.j2"].rsplit("/", 1)[0],
        test_file=paths["tests/test_method.py.j2"],
    )
