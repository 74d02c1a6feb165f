"""What the registrar is told about a planned method: names, target modules, and PEFT test-matrix rows."""

from __future__ import annotations

from typing import Any

from scaffold.kinds.tuner.registration import MethodRegistration
from scaffold.plan.method import MethodPlan


# PEFT's test models (tests/test_custom_models.py) per layer type: (model id, target modules).
_TEST_MODELS: dict[str, list[tuple[str, list[str]]]] = {
    "Linear": [("MLP", ["lin0"]), ("MLP", ["lin0", "lin1"])],
    "Conv1D": [("EmbConv1D", ["conv1d"])],
    "Embedding": [("EmbConv1D", ["emb"])],
    "Conv1d": [("Conv1d", ["conv1d"])],
    "Conv2d": [("Conv2d", ["conv2d"])],
    "Conv3d": [("Conv3d", ["conv3d"])],
}


def registration_for(plan: MethodPlan) -> MethodRegistration:
    title = plan.title
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for layer_type in plan.spec.layers:
        for model_id, targets in _TEST_MODELS[layer_type]:
            kwargs: dict[str, Any] = {"target_modules": targets, **plan.spec.peft_test_kwargs.get(layer_type, {})}
            if layer_type == "Conv1D":
                kwargs["fan_in_fan_out"] = True
            label = f"{model_id} {'+'.join(targets)}"
            # PEFT's matrix expects identity init here (test_disable_adapters compares with the base model);
            # non-trivial adapters are exercised by the multi-adapter cases below, as PEFT does.
            cases.append((f"Vanilla {label} {title}", model_id, dict(kwargs)))
            for selector in selectable(plan, layer_type):
                # the same module selected: its layers get the selector's flag (like PEFT's feedforward IA3 rows)
                cases.append((f"Vanilla {label} {title} {selector}", model_id, {**kwargs, selector: list(targets)}))
    # the Linear rows' extra kwargs hold for every row on the MLP (a size that must fit the MLP's layers, say)
    mlp = plan.spec.peft_test_kwargs.get("Linear", {})
    if "Linear" in plan.spec.layers:
        cases.append(
            (
                f"MLP {title} modules_to_save",
                "MLP",
                {"target_modules": ["lin0"], "modules_to_save": ["lin1"], **mlp},
            )
        )
        for selector in selectable(plan, "Linear"):
            # a selector given as a regex (full match), as PEFT's feedforward_modules may be
            cases.append(
                (f"Vanilla MLP regex {title} {selector}", "MLP", {"target_modules": "lin0", selector: "lin0", **mlp})
            )
    if plan.shared_weights and {"Embedding", "Conv1D"} <= set(plan.spec.layers):
        # shared weights are sized for the largest targeted layer (the MLP lin0+lin1 row above has two sizes):
        # here two layer types of different sizes, (100 -> 5) and (5 -> 1), read one tensor
        kwargs = {"target_modules": ["emb", "conv1d"], "fan_in_fan_out": True}
        cases.append((f"Vanilla EmbConv1D emb+conv1d {title}", "EmbConv1D", kwargs))
    multi: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    # PEFT's VeRA has only the "Same" row: its second adapter reuses the first one's projections, too small for other
    # layers. A generated method draws each adapter's shared weights for its own targets, so "Different" stays.
    if "Linear" in plan.spec.layers:
        multi.append(
            (
                f"{title} Same",
                {"target_modules": ["lin0"], "init_weights": False, **mlp},
                {"target_modules": ["lin0"], "init_weights": False, **mlp},
            )
        )
        multi.append(
            (
                f"{title} Different",
                {"target_modules": ["lin0"], "init_weights": False, **mlp},
                {"target_modules": ["lin1"], "init_weights": False, **mlp},
            )
        )
        for selector in selectable(plan, "Linear"):
            multi.append(
                (
                    f"{title} {selector} Different",
                    {"target_modules": ["lin0"], selector: ["lin0"], "init_weights": False, **mlp},
                    {"target_modules": ["lin1"], "init_weights": False, **mlp},
                )
            )
    return MethodRegistration(
        name=plan.name,
        peft_type=plan.peft_type,
        config_cls=plan.config_cls,
        model_cls=plan.model_cls,
        exported=(plan.config_cls, plan.model_cls),
        target_modules=dict(plan.target_modules) if isinstance(plan.target_modules, dict) else None,
        test_cases=tuple(cases),
        multiple_active_adapters_cases=tuple(multi),
        docs_title=title,
        docs_summary=plan.spec.summary,
        mergeable=plan.mergeable,
    )


def selectable(plan: MethodPlan, layer_type: str) -> list[str]:
    """The `modules` hyperparameters whose flag a layer of this type accepts: a layer that would scale its input is
    refused by the generated code unless it is a Linear or Conv1D."""
    refused = set(plan.input_flags) if layer_type not in ("Linear", "Conv1D") else set()
    return [selector.name for selector in plan.selectors if selector.flag not in refused]
