"""Starter specs for `peft-scaffold init`."""

from __future__ import annotations

import re

from scaffold.errors import ScaffoldError
from scaffold.resources import reference_spec
from scaffold.spec.model import MethodSpec


BLANK = """\
# A peft-scaffold method spec; see docs/spec.md for every field.
name: {name}
title: {title}
summary: >
  One paragraph on what the method does.
hyperparameters:
  r: {{type: int, default: 8, min: 1, help: Rank of the update.}}
weights:
  # shapes use hyperparameters and layer dims (in_features, out_features, ...)
  A: {{shape: [r, in_features], init: kaiming_uniform}}
  B: {{shape: [out_features, r], init: zeros}}
# the update as an (out_features, in_features) tensor expression
delta_weight: B @ A
layers: [Linear]
"""


def starter_spec(name: str, like: str) -> str:
    try:
        MethodSpec._check_name(name)  # the spec's own rule for names
    except ValueError as exc:
        raise ScaffoldError("NAME", str(exc)) from None
    title = name.replace("_", " ").title().replace(" ", "")
    if like == "blank":
        return BLANK.format(name=name, title=title)
    text = reference_spec(like).read_text(encoding="utf-8")
    text = re.sub(r"^name: .*$", f"name: {name}", text, count=1, flags=re.M)
    text = re.sub(r"^class_prefix: .*\n", "", text, count=1, flags=re.M)
    text = re.sub(r"^title: .*$", f"title: {title}", text, count=1, flags=re.M)
    header = f"# Starter spec for `{name}`, copied from the reference `{like}` spec. Edit the math below.\n"
    return header + "\n".join(line for line in text.splitlines() if not line.startswith("# ")) + "\n"
