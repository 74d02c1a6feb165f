"""Each registry site on the real files of the supported PEFT sdists: apply, idempotence, inverse, layout."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from scaffold.changeset import read_text
from scaffold.core.sites import Site
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.registration import DiscoveredMethod
from tests.tuner_api import SITES, MethodRegistration


SUPPORTED = ("0.21.2", "0.20.0", "0.19.1")


def make_reg(name: str, camel: str, target_modules=None) -> MethodRegistration:
    config, model = f"{camel}Config", f"{camel}Model"
    return MethodRegistration(
        name=name,
        peft_type=name.upper(),
        config_cls=config,
        model_cls=model,
        exported=(config, model),
        target_modules=target_modules,
        test_cases=(
            (f"Vanilla MLP 1 {camel}", "MLP", {"target_modules": "lin0"}),
            (
                f"Vanilla MLP 2 {camel} with a long description that needs wrapping",
                "MLP",
                {"target_modules": ["lin0", "lin1"], "init_weights": False, "r": 2, "some_long_option_name": 0.125},
            ),
        ),
        multiple_active_adapters_cases=(
            (f"{camel} Same", {"target_modules": ["lin0"]}, {"target_modules": ["lin0"]}),
            (f"{camel} Different", {"target_modules": ["lin0"]}, {"target_modules": ["lin1"]}),
        ),
        docs_title=camel,
    )


# One in the middle of every sorted list, one before everything (displaces the first import), one after
# everything with its own mapping dict.
REGS = {
    "middle": make_reg("mylora", "MyLora"),
    "first": make_reg("aaa", "Aaa"),
    "last": make_reg("zzz_tuning", "ZzzTuning", {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}),
}
PY_SITES = [site for site in SITES if site.relpath.endswith(".py")]
HEAVY = {"tests/test_custom_models.py"}  # a second to parse: fewer combinations


def cases() -> list[pytest.param]:
    out = []
    for site in PY_SITES:
        for version in SUPPORTED:
            for label, reg in REGS.items():
                if site.relpath in HEAVY and version != SUPPORTED[0] and label != "middle":
                    continue
                out.append(pytest.param(site, version, reg, id=f"{site.name}-{version}-{label}"))
    return out


def only_additions(old: str, new: str) -> bool:
    matcher = difflib.SequenceMatcher(a=old.splitlines(True), b=new.splitlines(True), autojunk=False)
    return all(tag in ("equal", "insert") for tag, *_ in matcher.get_opcodes())


@pytest.mark.parametrize("site, version, reg", cases())
def test_site_apply_is_idempotent_and_inverted(site: Site, version: str, reg: MethodRegistration, peft_sdist_for):
    original = read_text(peft_sdist_for(version) / site.path(reg.name))
    assert not site.is_registered(original, reg)

    new = site.apply(original, reg)
    assert new is not None and new != original
    compile(new, site.relpath, "exec")  # still parses
    assert site.is_registered(new, reg)
    assert only_additions(original, new), "the edit must only add lines"
    assert site.apply(new, reg) == new, "a second run changes nothing"

    assert site.remove(new, reg) == original, "remove restores the file byte for byte"
    assert site.remove(original, reg) == original


EXPECTED = {
    "peft_types": ['    MYLORA = "MYLORA"\n', "    - MYLORA\n"],
    "tuners_init": [
        "from .multitask_prompt_tuning import",
        "from .mylora import MyLoraConfig, MyLoraModel\nfrom .oft",
    ],
    "peft_init": ["    MultitaskPromptTuningInit,\n    MyLoraConfig,\n    MyLoraModel,\n", '    "MyLoraModel",\n'],
    "constants": [
        "TRANSFORMERS_MODELS_TO_MYLORA_TARGET_MODULES_MAPPING = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"
        ".copy()\n\n# mappings that are similar to LORA with small changes"
    ],
    "reexport_other": ["    TRANSFORMERS_MODELS_TO_MYLORA_TARGET_MODULES_MAPPING,\n    TRANSFORMERS_MODELS_TO_OFT_"],
    "reexport_utils": [
        '    "TRANSFORMERS_MODELS_TO_MYLORA_TARGET_MODULES_MAPPING",\n    "TRANSFORMERS_MODELS_TO_OFT_'
    ],
    "test_config": ["    MyLoraConfig,\n", "    (WaveFTConfig, {}),\n    (MyLoraConfig, {}),\n)\n"],
    "test_custom_models": [
        "    ##########\n    # MyLora #\n    ##########\n"
        '    ("Vanilla MLP 1 MyLora", "MLP", MyLoraConfig, {"target_modules": "lin0"}),\n'
        "    (\n"
        '        "Vanilla MLP 2 MyLora with a long description that needs wrapping",\n'
        '        "MLP",\n'
        "        MyLoraConfig,\n"
        '        {"target_modules": ["lin0", "lin1"], "init_weights": False, "r": 2, "some_long_option_name": 0.125},\n'
        "    ),\n"
        "]\nALL_PEFT_CONFIG_CLASSES"
    ],
    "test_custom_models_multi": [
        '    ("MyLora Same", "mylora", MyLoraConfig, {"target_modules": ["lin0"]}, {"target_modules": ["lin0"]}),\n'
    ],
    "test_merge_skip": [
        "    LoraConfig,\n    MissConfig,\n    MyLoraConfig,\n",
        '        pytest.skip("ShadowPEFT does not support merging adapters, skipping this test.")\n'
        "    if issubclass(config_cls, MyLoraConfig):\n"
        '        pytest.skip("MyLora does not support merging adapters, skipping this test.")\n\n\n'
        "def _skip_if_adding_weighted_adapters_not_supported",
    ],
}


@pytest.mark.parametrize("site", PY_SITES, ids=lambda s: s.name)
def test_site_writes_what_peft_writes(site: Site, peft_sdist: Path):
    reg = REGS["middle"]
    new = site.apply(read_text(peft_sdist / site.path(reg.name)), reg)
    for snippet in EXPECTED[site.name]:
        assert snippet in new


def test_own_mapping_goes_after_the_last_mapping(peft_sdist: Path):
    site = next(s for s in SITES if s.name == "constants")
    new = site.apply(read_text(peft_sdist / site.relpath), REGS["last"])
    assert (
        '    "nemotron_h": ["q_proj", "k_proj", "v_proj", "o_proj"],\n}\n\n'
        "TRANSFORMERS_MODELS_TO_ZZZ_TUNING_TARGET_MODULES_MAPPING = {\n"
        '    "llama": ["q_proj", "v_proj"],\n'
        '    "gpt2": ["c_attn"],\n'
        "}\n\n##################\n# MISC CONSTANTS #\n"
    ) in new


def test_first_package_import_keeps_the_group_heading():
    site = next(s for s in SITES if s.name == "tuners_init")
    source = '"""doc"""\n\n# the tuners\nfrom .bbb import BbbConfig, BbbModel\n\n__all__ = ["BbbConfig", "BbbModel"]\n'
    new = site.apply(source, REGS["first"])
    assert new.startswith('"""doc"""\n\n# the tuners\nfrom .aaa import AaaConfig, AaaModel\nfrom .bbb import')
    assert site.remove(new, REGS["first"]) == source


def test_long_package_import_is_wrapped_like_ruff():
    site = next(s for s in SITES if s.name == "tuners_init")
    reg = make_reg("averyveryverylongmethodname", "AVeryVeryVeryLongMethodNameThatIsLong")
    new = site.apply('from .lora import LoraConfig\n\n__all__ = ["LoraConfig"]\n', reg)
    assert (
        "from .averyveryverylongmethodname import (\n"
        "    AVeryVeryVeryLongMethodNameThatIsLongConfig,\n"
        "    AVeryVeryVeryLongMethodNameThatIsLongModel,\n)\n"
    ) in new


@pytest.mark.parametrize("site", PY_SITES, ids=lambda s: s.name)
def test_crlf_files_stay_crlf(site: Site, peft_sdist: Path):
    if site.relpath == "tests/test_custom_models.py":
        pytest.skip("slow to parse; the mechanism is the same")
    reg = REGS["middle"]
    original = read_text(peft_sdist / site.path(reg.name)).replace("\n", "\r\n")
    new = site.apply(original, reg)
    assert new.count("\n") == new.count("\r\n")
    assert site.remove(new, reg) == original


@pytest.mark.parametrize("site", PY_SITES, ids=lambda s: s.name)
def test_peft_registers_its_own_methods_the_same_way(site: Site, peft_sdist: Path):
    """The checks recognise how PEFT registered supertuning and tinylora by hand (for the merge-test skips, its
    methods that cannot merge: lily and shadow)."""
    methods = (("supertuning", "Supertuning"), ("tinylora", "TinyLora"))
    if site.name == "test_merge_skip":
        methods = (("lily", "Lily"), ("shadow", "Shadow"))
        assert not site.is_registered(
            read_text(peft_sdist / site.path("lora")), DiscoveredMethod("lora", "LORA", "LoraConfig")
        )
    for name, camel in methods:
        method = DiscoveredMethod(
            name=name,
            peft_type=name.upper(),
            config_cls=f"{camel}Config",
            model_cls=f"{camel}Model",
            has_package=True,
            constant_names=(f"TRANSFORMERS_MODELS_TO_{name.upper()}_TARGET_MODULES_MAPPING",),
        )
        assert site.is_registered(read_text(peft_sdist / site.path(name)), method), name


@pytest.mark.parametrize("site", PY_SITES, ids=lambda s: s.name)
def test_registered_files_pass_peft_ruff_config(site: Site, peft_sdist: Path, tmp_path: Path):
    """ruff (PEFT's pinned version, its own config) finds nothing to reformat or re-sort in the edited files."""
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed next to the interpreter")
    (tmp_path / "pyproject.toml").write_bytes((peft_sdist / "pyproject.toml").read_bytes())
    target = tmp_path / "edited.py"
    for reg in REGS.values():
        target.write_text(site.apply(read_text(peft_sdist / site.path(reg.name)), reg), encoding="utf-8")
        fmt = subprocess.run(
            [ruff, "format", "--check", "--diff", target], cwd=tmp_path, capture_output=True, text=True
        )
        assert fmt.returncode == 0, fmt.stdout + fmt.stderr
        lint = subprocess.run(
            [ruff, "check", "--select", "I,RUF022", "--no-cache", target], cwd=tmp_path, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize(
    "relpath, broken, message",
    [
        ("src/peft/utils/peft_types.py", "class TaskType:\n    pass\n", "expected `class PeftType(...)` with string"),
        ("src/peft/tuners/__init__.py", "from .lora import LoraConfig\n", "expected a top-level `__all__"),
        ("src/peft/tuners/__init__.py", '__all__ = ["X"]\n', "expected `from .<package> import ...`"),
        ("src/peft/__init__.py", '__all__ = ["X"]\n', "expected a top-level `from .tuners import (...)`"),
        ("src/peft/utils/constants.py", "X = 1\n", "expected a block of `X = TRANSFORMERS_MODELS_TO_LORA"),
        ("src/peft/utils/other.py", "__all__ = []\n", "expected a top-level `from .constants import (...)`"),
        (
            "tests/test_config.py",
            "from peft import (\n    LoraConfig,\n)\n",
            "expected a top-level `ALL_CONFIG_CLASSES",
        ),
        ("tests/test_custom_models.py", "from peft import LoraConfig\n", "expected a top-level `TEST_CASES = [...]`"),
        ("src/peft/utils/peft_types.py", "class PeftType(:\n", "is not valid Python"),
    ],
)
def test_unrecognised_file_shapes_are_refused_naming_the_file(relpath: str, broken: str, message: str):
    sites = [s for s in PY_SITES if s.relpath == relpath]
    with pytest.raises(ScaffoldError) as excinfo:
        for site in sites:
            site.apply(broken, REGS["middle"])
    assert str(excinfo.value).startswith(f"{relpath}: ")
    assert message in str(excinfo.value)


def test_missing_file_is_refused():
    site = PY_SITES[0]
    with pytest.raises(ScaffoldError, match="src/peft/utils/peft_types.py: file not found"):
        site.apply(None, REGS["middle"])


def test_config_row_goes_into_a_sorted_matrix_at_its_place():
    site = next(s for s in PY_SITES if s.name == "test_config")
    source = (
        "from peft import (\n    AdaLoraConfig,\n    VeraConfig,\n)\n\n"
        'ALL_CONFIG_CLASSES = (\n    (AdaLoraConfig, {"total_step": 1}),\n    (VeraConfig, {}),\n)\n'
    )
    new = site.apply(source, REGS["middle"])
    assert '    (AdaLoraConfig, {"total_step": 1}),\n    (MyLoraConfig, {}),\n    (VeraConfig, {}),\n' in new
    assert site.remove(new, REGS["middle"]) == source


def test_registration_without_manifest_is_removable_by_registration(peft_tree: Path, snapshot):
    from scaffold.changeset import ChangeSet
    from tests.tuner_api import detect_peft_tree, plan_registration, plan_unregistration

    before = snapshot(peft_tree)
    tree = detect_peft_tree(peft_tree)
    cs = ChangeSet(peft_tree)
    plan_registration(cs, tree, REGS["last"])
    cs.apply()
    cs = ChangeSet(peft_tree)
    results = plan_unregistration(cs, tree, REGS["last"])
    # the merge-test skip list never listed this (mergeable) method: nothing to remove there
    assert {r.status for r in results if r.site != "test_merge_skip"} == {"removed", "skipped"}
    assert {r.status for r in results if r.site == "test_merge_skip"} == {"not registered"}
    cs.apply()
    assert snapshot(peft_tree) == before
