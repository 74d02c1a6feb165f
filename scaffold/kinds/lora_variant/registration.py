"""What registering a LoRA variant adds to a PEFT tree (see `sites`), and the checks that the tree can take it.

In a PEFT tree:

    src/peft/tuners/lora/<name>.py                       the LoraVariant subclass(es), one per LoRA layer class
    src/peft/tuners/lora/config.py                       + `use_<name>` (see `sites`)
    src/peft/tuners/lora/layer.py                        + `("use_<name>",): <name>.<Variant>` per layer class
    tests/test_custom_models.py                          + TEST_CASES rows with `use_<name>: True`
    src/peft/tuners/lora/.peft-scaffold-<name>.json      the manifest `remove` works from
"""

from __future__ import annotations

from scaffold.changeset import ChangeSet
from scaffold.core.manifest import Manifest
from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_variant import sites
from scaffold.kinds.lora_variant.plan import VariantPlan
from scaffold.kinds.lora_variant.sites import LORA_DIR, module_path
from scaffold.register import _cst
from scaffold.register.tree import PeftTree


# PEFT's test models (tests/test_custom_models.py) per LoRA layer class: (description, model id, target modules).
_TEST_MODELS: dict[str, list[tuple[str, str, list[str]]]] = {
    "Linear": [
        ("Vanilla MLP 1 LoRA with {title}", "MLP", ["lin0"]),
        ("Vanilla MLP 2 LoRA with {title}", "MLP", ["lin0", "lin1"]),
        ("Embedding + transformers Conv1D 1 LoRA with {title}", "EmbConv1D", ["conv1d"]),
    ],
    "Embedding": [("Embedding + transformers Conv1D 2 LoRA with {title}", "EmbConv1D", ["emb"])],
    "Conv1d": [("Conv1d LoRA with {title}", "Conv1d", ["conv1d"])],
    "Conv2d": [("Conv2d 1 LoRA with {title}", "Conv2d", ["conv2d"])],
    "Conv3d": [("Conv3d 1 LoRA with {title}", "Conv3d", ["conv3d"])],
}


def registration_for(plan: VariantPlan) -> sites.VariantRegistration:
    title = plan.title
    rows = []
    descriptions = []
    for layer in plan.layer_classes:
        for description, model_id, targets in _TEST_MODELS[layer]:
            if targets == ["emb"] and "Linear" in plan.layer_classes:
                # as PEFT's "Embedding + transformers Conv1D 3 DoRA": with the embedding alone, a magnitude vector
                # moves too little in test_only_params_are_updated (PEFT raises the learning rate for `use_dora`)
                targets = ["emb", "conv1d"]
            text = description.format(title=title)
            kwargs = {"target_modules": targets, plan.switch: True, **plan.spec.peft_test_kwargs}
            if model_id == "EmbConv1D" and targets == ["conv1d"]:
                kwargs["fan_in_fan_out"] = True
            rows.append(sites.t.literal_row((text, model_id, _cst.Code("LoraConfig"), kwargs)))
            descriptions.append(text)
    if "Linear" in plan.layer_classes:
        # the training-time path: dropout on the input
        text = f"Vanilla MLP 3 LoRA with {title} and dropout"
        kwargs = {
            "target_modules": ["lin0", "lin1"],
            plan.switch: True,
            "lora_dropout": 0.1,
            **plan.spec.peft_test_kwargs,
        }
        rows.append(sites.t.literal_row((text, "MLP", _cst.Code("LoraConfig"), kwargs)))
        descriptions.append(text)
    return sites.VariantRegistration(
        name=plan.name,
        switch=plan.switch,
        field_code=_format_field(sites.field_code(plan.switch, plan.help)),
        doc_entry=sites.doc_entry(plan.switch, plan.help),
        mapping=tuple(plan.mapping_entries.items()),
        test_rows=tuple(rows),
        test_descriptions=tuple(descriptions),
        banner=tuple(sites.t.banner(f"{title} (LoRA variant, use_{plan.name})")),
    )


def _format_field(code: str) -> str:
    """The field formatted by ruff as it would be inside a class body, dedented again."""
    from scaffold.render.format import format_sources

    wrapped = "from dataclasses import dataclass, field\n\n\n@dataclass\nclass C:\n" + "".join(
        f"    {line}" if line.strip() else line for line in code.splitlines(keepends=True)
    )
    formatted = format_sources({"field.py": wrapped})["field.py"]
    body = formatted.split("class C:\n", 1)[1]
    return "".join(line[4:] if line.startswith("    ") else line for line in body.splitlines(keepends=True))


def replays_merged(tree: PeftTree | None) -> bool:
    """Whether LoRA's layers keep `_unmerged_base_weight` (PEFT >= 0.21; assumed for stock peft, `--out`)."""
    if tree is None:
        return True
    layer = tree.root / sites.LAYER
    return not layer.is_file() or "def _unmerged_base_weight" in layer.read_text(encoding="utf-8")


def check_tree(
    tree: PeftTree, changeset: ChangeSet, plan: VariantPlan, reg: sites.VariantRegistration, old: Manifest | None
) -> None:
    """Check that the tree can take the variant; raise `ScaffoldError` naming the cause otherwise."""
    spec = plan.spec
    layer_source = _require(changeset, sites.LAYER)
    config_source = _require(changeset, sites.CONFIG)
    for layer in spec.layers:
        if sites.mapping_entries(layer_source, layer) is None:
            # reuses the transform's message: no class, or no mapping
            probe = sites.VariantRegistration(spec.name, spec.switch, "", "", ((layer, "X"),), (), (), ())
            sites.apply_layer(layer_source, probe)
    if old is None:
        if spec.switch in sites.config_fields(config_source):
            raise ScaffoldError(
                sites.CONFIG, f"LoraConfig already has a field `{spec.switch}`; choose another name for the variant"
            )
        module = module_path(spec.name)
        if changeset.exists(module) or (changeset.root / LORA_DIR / spec.name).exists():
            raise ScaffoldError(module, f"already exists; the name {spec.name!r} is taken in peft.tuners.lora")
        for weight in spec.weights:
            attr = f"lora_{spec.name}_{weight}"
            if attr in layer_source:
                raise ScaffoldError(sites.LAYER, f"already uses the attribute name `{attr}`")
    tests = changeset.read(sites.TEST_CUSTOM_MODELS)
    if tests is not None and tree.has_tests:
        ours = set(old.registration.test_descriptions) if old is not None else set()
        taken = (set(sites.test_case_descriptions(tests)) - ours) & set(reg.test_descriptions)
        if taken:
            raise ScaffoldError(
                sites.TEST_CUSTOM_MODELS,
                f"TEST_CASES already has a row {sorted(taken)[0]!r}; give the variant another `title`",
            )


def _require(changeset: ChangeSet, rel: str) -> str:
    text = changeset.read(rel)
    if text is None:
        raise ScaffoldError(rel, "file not found; expected in a PEFT source tree")
    return text
