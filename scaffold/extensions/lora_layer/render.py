"""The files a `kind: lora_layer` spec generates, in a PEFT tree or standalone (`--out`)."""

from __future__ import annotations

import datetime
from enum import Enum

from scaffold.extensions.lora_layer.plan import LoraLayerPlan
from scaffold.render.files import header_year
from scaffold.render.format import format_sources
from scaffold.render.templates import environment


class LayerLayout(str, Enum):
    PEFT_TREE = "peft-tree"  # src/peft/tuners/lora/<name>.py, tests/test_lora_<name>.py, examples/lora_<name>/
    STANDALONE = "standalone"  # lora_<name>.py, tests/test_lora_<name>.py, examples/lora_<name>_example.py


def layer_paths(plan: LoraLayerPlan, layout: LayerLayout) -> dict[str, str]:
    """template -> output path (relative to the tree or the --out directory)."""
    stem = plan.standalone_module
    if layout is LayerLayout.PEFT_TREE:
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


def render_layer(
    plan: LoraLayerPlan, layout: LayerLayout, *, spec_file: str, existing: str | None = None
) -> dict[str, str]:
    """Render and format the files; `existing` is the earlier generated module, whose header year is kept."""
    env = environment()
    paths = layer_paths(plan, layout)
    context = {
        "p": plan,
        "layout": layout.value,
        "spec_file": spec_file,
        "year": header_year(existing) or datetime.date.today().year,
        "example_name": paths["lora_layer/example.py.j2"].rsplit("/", 1)[-1],
    }
    rendered = {out: env.get_template(name).render(**context) for name, out in paths.items()}
    first_party = () if layout is LayerLayout.PEFT_TREE else (plan.standalone_module,)
    return format_sources(rendered, first_party=first_party)
