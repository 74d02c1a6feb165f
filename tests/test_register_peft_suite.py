"""PEFT's own tests, run on a tree where a stand-in method (a renamed clone of supertuning) was registered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scaffold.changeset import ChangeSet
from tests.conftest import fake_method_files
from tests.tuner_api import detect_peft_tree, doctor, plan_registration, write_manifest


# These need the Hugging Face Hub and fail offline for every method, LoraConfig included.
HUB_TESTS = ("test_from_pretrained", "test_from_pretrained_cache_dir", "test_save_pretrained_with_runtime_config")


@pytest.fixture(scope="module")
def registered_tree(tmp_path_factory: pytest.TempPathFactory, peft_sdist: Path) -> Path:
    from scaffold.peft_source import copy_peft_tree

    root = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("suite") / "peft")
    tree = detect_peft_tree(root)
    reg, files = fake_method_files(root)
    cs = ChangeSet(root)
    for rel, text in files.items():
        cs.write(rel, text)
    plan_registration(cs, tree, reg)
    write_manifest(cs, tree, reg, files, spec_hash="suite")
    cs.apply()
    (root / "tests" / "__init__.py").touch()  # PEFT's tests import their helpers relatively
    return root


def run_peft_pytest(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}",  # the tree's peft, not the installed one
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cmd = [sys.executable, "-m", "pytest", "--no-cov", "-p", "no:cacheprovider", "-n", "2", "-q", *args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", proc.stdout)}
    return proc, counts


@pytest.mark.slow
def test_peft_custom_model_matrix_passes_for_the_registered_method(registered_tree: Path):
    proc, counts = run_peft_pytest(registered_tree, "tests/test_custom_models.py", "-k", "MySuper")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert counts.get("failed", 0) == 0 and counts.get("passed", 0) >= 250, counts


@pytest.mark.slow
def test_peft_config_tests_pass_for_the_registered_method(registered_tree: Path):
    selector = "MySuperConfig and not " + " and not ".join(HUB_TESTS)
    proc, counts = run_peft_pytest(registered_tree, "tests/test_config.py", "-k", selector)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert counts.get("passed", 0) >= 20, counts


@pytest.mark.slow
def test_doctor_sees_the_registered_method_complete(registered_tree: Path):
    [row] = doctor(detect_peft_tree(registered_tree), "mysuper")
    assert row.complete and row.method.generated
