"""Is `base_layer` a real, importable `torch.nn.Module` class that PEFT's LoRA does not cover yet?

The spec model checks the dotted path statically (`spec.check_base_path`). Importing it needs torch, which the
CLI process never imports (generation stays fast and torch-free), so this check runs in a subprocess of the same
Python (`sys.executable`). It also builds the spec's example layer from its literal arguments and checks that the
attributes the spec reads exist on it. No spec expression is evaluated.

When torch is not installed in this environment the check is skipped (and `new`/`check` say so); set
`PEFT_SCAFFOLD_SKIP_IMPORT_CHECK=1` to skip it on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

from scaffold.errors import ScaffoldError
from scaffold.kinds.lora_layer.spec import LoraLayerSpec


# Runs in the subprocess: argv[1] is a JSON request, the answer is one JSON line on stdout.
_SCRIPT = r"""
import importlib, json, sys

request = json.loads(sys.argv[1])
path = request["path"]
answer = {"error": None}

def fail(field, message):
    answer["error"] = [field, message]
    print(json.dumps(answer))
    sys.exit(0)

try:
    import torch
except Exception as exc:
    fail("base_layer", f"torch cannot be imported ({type(exc).__name__}: {exc})")

parts = path.split(".")
obj = None
for cut in range(len(parts) - 1, 0, -1):
    module_name = ".".join(parts[:cut])
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            continue  # that module does not exist: try a shorter prefix
        fail("base_layer", f"importing {module_name} failed ({type(exc).__name__}: {exc})")
    except Exception as exc:
        fail("base_layer", f"importing {module_name} failed ({type(exc).__name__}: {exc})")
    for attr in parts[cut:]:
        if not hasattr(obj, attr):
            fail("base_layer", f"cannot import {path}: {type(obj).__name__} `{obj.__name__}` has no attribute `{attr}`")
        obj = getattr(obj, attr)
    break
else:
    fail("base_layer", f"cannot import {path}: no module `{parts[0]}`")

if not isinstance(obj, type):
    fail("base_layer", f"{path} is not a class (it is a {type(obj).__name__})")
if not issubclass(obj, torch.nn.Module):
    fail("base_layer", f"{path} is not a torch.nn.Module subclass")

supported = [torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.MultiheadAttention]
try:
    from transformers.pytorch_utils import Conv1D
    supported.append(Conv1D)
except Exception:
    pass
for cls in supported:
    if issubclass(obj, cls):
        fail("base_layer", f"{path} is a subclass of {cls.__module__}.{cls.__qualname__}, which PEFT's LoRA already "
             "supports (dispatch_default catches it first)")

example = request["example"]
try:
    layer = obj(*example["args"], **example["kwargs"])
except Exception as exc:
    fail("example", f"{path}(*args, **kwargs) failed ({type(exc).__name__}: {exc})")
weight = getattr(layer, "weight", None)
if not isinstance(weight, torch.Tensor):
    fail("base_layer", f"{path} has no `weight` tensor: LoRA layers of this kind adapt the `weight` parameter")
for attr in request["attributes"]:
    if not hasattr(layer, attr):
        fail("attributes", f"the example {path} has no attribute `{attr}`")
answer["module"] = obj.__module__
answer["weight_shape"] = list(weight.shape)
print(json.dumps(answer))
"""


@dataclass(frozen=True)
class BaseTypeCheck:
    checked: bool
    note: str
    weight_shape: tuple[int, ...] | None = None


def check_base_type(spec: LoraLayerSpec, source: str) -> BaseTypeCheck:
    """Import `spec.base_layer` in a subprocess; raise `ScaffoldError` (exit 2) naming the spec field if it is bad."""
    if os.environ.get("PEFT_SCAFFOLD_SKIP_IMPORT_CHECK"):
        return BaseTypeCheck(False, f"{spec.base_layer}: import check skipped (PEFT_SCAFFOLD_SKIP_IMPORT_CHECK)")
    if importlib.util.find_spec("torch") is None:
        return BaseTypeCheck(False, f"{spec.base_layer}: not verified (torch is not installed in this environment)")
    request = json.dumps(
        {
            "path": spec.base_layer,
            "attributes": list(spec.attributes),
            "example": {"args": spec.example.args, "kwargs": spec.example.kwargs},
        },
        sort_keys=True,
    )
    error, weight_shape = _run(request)
    if error is not None:
        field, message = error
        raise ScaffoldError(f"{source}: {field}", message)
    shape = tuple(weight_shape) if weight_shape is not None else None
    return BaseTypeCheck(True, f"{spec.base_layer}: importable torch.nn.Module (checked in a subprocess)", shape)


@lru_cache(maxsize=32)
def _run(request: str) -> tuple[list[str] | None, list[int] | None]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, request], capture_output=True, text=True, timeout=300, env=env
        )
    except subprocess.TimeoutExpired:
        raise ScaffoldError("base_layer", "the import check timed out (300 s)", 1) from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScaffoldError("base_layer", f"the import check failed: {tail}", 1)
    answer = json.loads(lines[-1])
    return answer.get("error"), answer.get("weight_shape")
