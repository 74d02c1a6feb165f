"""The spec kinds, peers with one interface (`scaffold.core.kind.Kind`), and the one place `kind:` is dispatched.

    tuner         a new PEFT method: src/peft/tuners/<name>/ and its registration      scaffold/kinds/tuner/
    lora_variant  a LoRA variant switched on by `LoraConfig.use_<name>`                 scaffold/kinds/lora_variant/
    lora_layer    a LoRA layer class for a base layer type LoRA does not cover          scaffold/kinds/lora_layer/

Each package defines `KIND`; it is imported on first use, so a spec of one kind never pays for the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from scaffold.core.kind import Kind


KIND_NAMES = ("tuner", "lora_variant", "lora_layer")
DEFAULT_KIND = "tuner"


def get_kind(name: str) -> Kind | None:
    """The kind called `name`, or None when there is no such kind."""
    if name not in KIND_NAMES:
        return None
    kind: Kind = importlib.import_module(f"scaffold.kinds.{name}").KIND
    return kind


def all_kinds() -> list[Kind]:
    return [kind for name in KIND_NAMES if (kind := get_kind(name)) is not None]


def kind_of(value: object, source: str = "<spec>") -> Kind:
    """The kind a spec's `kind:` value names; one `ScaffoldError` naming the field otherwise."""
    kind = get_kind(value) if isinstance(value, str) else None
    if kind is None:
        from scaffold.errors import ScaffoldError

        raise ScaffoldError(f"{source}: kind", f"must be one of {', '.join(KIND_NAMES)} (got {value!r})")
    return kind
