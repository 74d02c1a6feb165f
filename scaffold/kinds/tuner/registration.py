"""What the registrar needs to know about a method: names and the test/doc entries to add for it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CLASS = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MethodRegistration:
    name: str  # lowercase method name, e.g. "mylora"; the package is src/peft/tuners/<name>/
    peft_type: str  # PeftType member, e.g. "MYLORA" (its value is the same string, as in PEFT)
    config_cls: str  # e.g. "MyLoraConfig"
    model_cls: str  # e.g. "MyLoraModel"
    exported: tuple[str, ...]  # what tuners/__init__.py and peft/__init__.py import from the package
    # None: the mapping is `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()`, as PEFT does for
    # methods that target the same modules as LoRA.
    target_modules: dict[str, list[str]] | None = None
    # tests/test_custom_models.py TEST_CASES rows: (description, model id such as "MLP", config kwargs)
    test_cases: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    # MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES rows: (description, config kwargs 1, config kwargs 2)
    multiple_active_adapters_cases: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = ()
    docs_title: str = ""  # the docs page heading and toctree title, e.g. "MyLoRA"
    docs_summary: str = ""  # a paragraph (markdown) for the docs page
    # the whole page when the generator rendered one (templates/docs/page.md.j2); not part of the registration's
    # identity (an existing page is kept), nor of the manifest (the page is a recorded file)
    docs_page: str = field(default="", compare=False)
    # Mandatory config kwargs for tests/test_config.py ALL_CONFIG_CLASSES (PEFT: `(AdaLoraConfig, {"total_step": 1})`)
    config_mandatory_kwargs: dict[str, Any] = field(default_factory=dict)
    # False: the method cannot be merged; PEFT's merge tests skip it (tests/testing_common.py)
    mergeable: bool = True

    @property
    def constant_name(self) -> str:
        return f"TRANSFORMERS_MODELS_TO_{self.peft_type}_TARGET_MODULES_MAPPING"

    @property
    def constant_names(self) -> tuple[str, ...]:
        return (self.constant_name,)

    @property
    def prefix(self) -> str:
        """The parameter-name prefix PEFT derives from the name (`register_peft_method` default)."""
        return f"{self.name}_"

    @property
    def title(self) -> str:
        """A short display name: the docs title, else the config class without `Config`."""
        if self.docs_title:
            return self.docs_title
        return self.config_cls.removesuffix("Config") or self.config_cls

    def to_data(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("docs_page")
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> MethodRegistration:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["exported"] = tuple(kwargs.get("exported", ()))
        for key in ("test_cases", "multiple_active_adapters_cases"):
            kwargs[key] = tuple(tuple(row) for row in kwargs.get(key, ()))
        return cls(**kwargs)

    def validate(self) -> None:
        """Raise `ScaffoldError` if the names could not be registered in PEFT as given."""
        from scaffold.errors import ScaffoldError

        if not _NAME.match(self.name) or self.name.endswith("_"):
            raise ScaffoldError("name", f"{self.name!r} must be lowercase letters, digits and '_' (not at the end)")
        if self.peft_type != self.name.upper():
            # register_peft_method looks the member up as name.upper()
            raise ScaffoldError(
                "peft_type", f"must be {self.name.upper()!r} (the upper-cased name), got {self.peft_type!r}"
            )
        for label, value in (("config_cls", self.config_cls), ("model_cls", self.model_cls)):
            if not _CLASS.match(value):
                raise ScaffoldError(label, f"{value!r} is not a class name")
        if self.config_cls not in self.exported or self.model_cls not in self.exported:
            raise ScaffoldError("exported", "must include the config and the model class")
        for name in self.exported:
            if not name.isidentifier():
                raise ScaffoldError("exported", f"{name!r} is not an identifier")


@dataclass(frozen=True)
class DiscoveredMethod:
    """A method found in a tree (hand-written or generated), as `doctor` sees it.

    It has the same name attributes the sites' `is_registered` checks read from a `MethodRegistration`.
    """

    name: str
    peft_type: str
    config_cls: str = ""  # "" when there is no package registering it
    model_cls: str = ""
    has_package: bool = False
    constant_names: tuple[str, ...] = ()  # target-module mappings the package uses; () for e.g. prompt learning
    generated: bool = False  # has a peft-scaffold manifest

    @property
    def exported(self) -> tuple[str, ...]:
        return tuple(n for n in (self.config_cls, self.model_cls) if n)

    @property
    def title(self) -> str:
        return self.config_cls.removesuffix("Config") or self.name


# What the sites' checks read; both classes above provide it.
MethodNames = MethodRegistration | DiscoveredMethod
