"""What the generated example, benchmark and docs page need to know about a method, decided from its plan.

The templates must work for any spec, so nothing here looks at a method's name: the tiny model and the modules the
example adapts follow from the layer types the spec supports and its target-module mapping; the rank the
benchmark compares at follows from the hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaffold.plan import MethodPlan


# The tiny models the example can build, and their modules by spec layer type (the Linear and Conv1D ones are also
# PEFT's LoRA defaults for these model types).
_MODULES_BY_LAYER = {
    "llama": {"Linear": ["q_proj", "v_proj"], "Embedding": ["embed_tokens"]},
    "gpt2": {"Conv1D": ["c_attn"]},
}
# Hyperparameter names that mean "rank" (PEFT: LoRA/LoHa/LoKr `r`, VeRA `r`, others `rank`).
RANK_NAMES = ("r", "rank")
DEFAULT_LORA_RANK = 8


@dataclass(frozen=True)
class ExampleModel:
    """The tiny transformers model the example trains, and the modules it adapts."""

    model_type: str  # "llama" or "gpt2"
    target_modules: list[str]


def example_model(plan: MethodPlan) -> ExampleModel | None:
    """A tiny model with layers the method supports (Llama for Linear/Embedding, GPT-2 for transformers' Conv1D),
    targeting the spec's own mapping for that model type, else the model's modules of the first supported layer
    type. None when the method supports none of those layer types (convolutions only)."""
    layers = set(plan.spec.layers)
    for model_type, by_layer in _MODULES_BY_LAYER.items():
        if not layers & set(by_layer):
            continue
        if isinstance(plan.target_modules, dict) and model_type in plan.target_modules:
            return ExampleModel(model_type, list(plan.target_modules[model_type]))
        supported = [layer for layer in by_layer if layer in layers]
        return ExampleModel(model_type, list(by_layer[supported[0]]))
    return None


def rank_hyperparameter(plan: MethodPlan) -> tuple[str, int] | None:
    """The method's rank-like int hyperparameter and its default, which the benchmark gives LoRA too."""
    for hp in plan.hyperparameters:
        if hp.name in RANK_NAMES and hp.spec.type == "int" and isinstance(hp.spec.default, int):
            return hp.name, hp.spec.default
    return None


def _type_text(hp: Any) -> str:
    spec = hp.spec
    text = f"list[{spec.item}]" if spec.type == "list" else spec.type
    if spec.type == "enum":
        text = " \\| ".join(f"`{c!r}`" for c in spec.choices or ())
        return text
    return f"`{text} \\| None`" if spec.nullable else f"`{text}`"


def _bounds_text(hp: Any) -> str:
    spec = hp.spec
    parts = []
    for key, op in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")):
        value = getattr(spec, key)
        if value is not None:
            parts.append(f"{op} {value:g}")
    if spec.type == "str" and spec.choices:
        parts.append("one of " + ", ".join(f"`{c!r}`" for c in spec.choices))
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Markdown table cells may not hold pipes or line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def config_rows(plan: MethodPlan) -> list[tuple[str, str, str, str, str]]:
    """(name, type, default, bounds, help) for every hyperparameter, as markdown table cells."""
    rows = []
    for hp in plan.hyperparameters:
        rows.append(
            (f"`{hp.name}`", _type_text(hp), f"`{hp.default}`", _cell(_bounds_text(hp)) or "-", _cell(hp.help) or "-")
        )
    return rows


def example_context(plan: MethodPlan) -> dict[str, Any]:
    """Template variables for templates/examples/** and templates/docs/**."""
    model = example_model(plan)
    rank = rank_hyperparameter(plan)
    return {
        "example_model": model,
        "example_dir": f"examples/{plan.name}",
        "rank_name": rank[0] if rank else None,
        "lora_rank": rank[1] if rank else DEFAULT_LORA_RANK,
        "config_rows": config_rows(plan),
    }
