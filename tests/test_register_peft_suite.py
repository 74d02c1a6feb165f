"""A tree where a stand-in method (a renamed clone of supertuning) was registered by the registrar alone.

PEFT's own tests (tests/test_custom_models.py and tests/test_config.py) for the stand-in run in tests/test_in_tree.py,
in one PEFT run with the other registered methods (collecting PEFT's 20k tests once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import register_fake_method
from tests.tuner_api import detect_peft_tree, doctor


@pytest.fixture(scope="module")
def registered_tree(tmp_path_factory: pytest.TempPathFactory, peft_sdist: Path) -> Path:
    from scaffold.peft_source import copy_peft_tree

    root = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("suite") / "peft")
    register_fake_method(root)
    return root


@pytest.mark.slow
def test_doctor_sees_the_registered_method_complete(registered_tree: Path):
    [row] = doctor(detect_peft_tree(registered_tree), "mysuper")
    assert row.complete and row.method.generated
