"""Random draws in init expressions: `kaiming_uniform(rows, cols, a=...)` / `normal(rows, cols, mean=..., std=...)`
and `torch.repeat_interleave`, so that HRA's paired identity init is writable. What the plan renders, what the
generated layer computes (paired columns that cancel), and the specs `check` refuses.

The probe and oracle checks of the unseen spec tests/specs/pairedrefl.yaml are in tests/test_oracle.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.plan import build_plan
from scaffold.spec import load_spec


REPO = Path(__file__).resolve().parent.parent
PAIRED = REPO / "tests" / "specs" / "pairedrefl.yaml"
runner = CliRunner()
_PAIRED = yaml.safe_load(PAIRED.read_text(encoding="utf-8"))


def _u(**changes: Any) -> dict[str, Any]:
    return {**_PAIRED, "weights": {"u": {**_PAIRED["weights"]["u"], **changes}}}


def test_plan_renders_the_draw_as_nn_init_on_a_new_cpu_tensor() -> None:
    (u,) = build_plan(load_spec(PAIRED)).weights
    assert u.init_expr == (
        "torch.repeat_interleave(nn.init.kaiming_uniform_(torch.empty(self.in_features, half), a=5 ** 0.5), 2, dim=1)"
    )
    # init_weights=False replaces it by a plain draw of every column
    assert u.random_init_lines == ["nn.init.kaiming_uniform_(self.pairedrefl_u[adapter_name], a=math.sqrt(5))"]


def test_normal_draw_takes_mean_and_std() -> None:
    from scaffold.spec.model import MethodSpec

    spec = MethodSpec.model_validate(_u(init={"expr": "normal(in_features, 2 * half, std=0.1)"}))
    (u,) = build_plan(spec).weights
    assert u.init_expr == "nn.init.normal_(torch.empty(self.in_features, 2 * half), std=0.1)"


def test_paired_draw_cancels_in_the_specs_compact_reflection_product(tmp_path: Path) -> None:
    import torch

    result = runner.invoke(app, ["new", str(PAIRED), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # what the generated update_layer computes (see the rendered line below), under a fixed seed
    torch.manual_seed(0)
    half = torch.empty(10, 2)
    torch.nn.init.kaiming_uniform_(half, a=5**0.5)
    paired = torch.repeat_interleave(half, 2, dim=1)
    assert torch.equal(paired[:, 0], paired[:, 1]) and torch.equal(paired[:, 2], paired[:, 3])
    # the spec's rotation (compact WY product of the reflections) of equal pairs is the identity
    unit = paired / paired.norm(dim=0)
    rotation = torch.eye(10) - unit @ torch.linalg.solve(torch.eye(4) / 2 + torch.triu(unit.T @ unit, 1), unit.T)
    torch.testing.assert_close(rotation, torch.eye(10), atol=1e-5, rtol=0)
    # and of independent columns it is the product of the reflections, an orthogonal matrix that is not the identity
    free = torch.randn(10, 4)
    unit = free / free.norm(dim=0)
    product = torch.eye(10)
    for i in range(4):
        product = product - 2 * product @ unit[:, i : i + 1] @ unit[:, i : i + 1].T
    rotation = torch.eye(10) - unit @ torch.linalg.solve(torch.eye(4) / 2 + torch.triu(unit.T @ unit, 1), unit.T)
    torch.testing.assert_close(rotation, product, atol=1e-5, rtol=0)
    layer = (tmp_path / "pairedrefl" / "layer.py").read_text(encoding="utf-8")
    assert "nn.init.kaiming_uniform_(torch.empty(self.in_features, half), a=5**0.5), 2, dim=1" in layer


REFUSED = [
    ("draw-without-shape", _u(init={"expr": "kaiming_uniform(a=1.0)"}), "weights.u.init.expr"),
    ("draw-unknown-keyword", _u(init={"expr": "normal(in_features, 4, gain=2.0)"}), "weights.u.init.expr"),
    # a deterministic init expression is used whatever init_weights says: no random_init
    ("random-init-without-draw", _u(init={"expr": "torch.ones(in_features, 2 * half)"}), "random_init"),
    # draws are for init expressions only
    ("draw-in-delta", {**_PAIRED, "delta_weight": "weight @ normal(in_features, in_features)"}, "delta_weight"),
]


@pytest.mark.parametrize("data, field", [pytest.param(d, f, id=i) for i, d, f in REFUSED])
def test_check_refuses_with_one_line_naming_the_field(data: dict[str, Any], field: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    where = message.split(f"{path}: ", 1)[1].split(": ", 1)[0]
    assert where == field or where.endswith(f".{field}"), message
