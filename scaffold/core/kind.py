"""What a spec kind provides to the generation core (`scaffold.core.generate`).

A kind (`tuner`, `lora_variant`, `lora_layer`: `scaffold/kinds/<kind>/`) is a spec model, a planner, the templates
it renders and the registry sites it edits. Everything else (rendering, staging, the manifest, the edited-files
guard, registering and unregistering, `remove`) is the core's, the same for every kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel


if TYPE_CHECKING:
    from scaffold.changeset import ChangeSet
    from scaffold.core.manifest import Manifest
    from scaffold.core.sites import Site
    from scaffold.register.tree import PeftTree
    from scaffold.render.files import Layout


class Kind(ABC):
    name: str  # the spec's `kind:`
    spec_model: type[BaseModel]

    # -- what it generates ----------------------------------------------------------------------------------------

    @abstractmethod
    def plan(self, spec: Any, source: str, tree: PeftTree | None, templates: Path | None = None) -> Any:
        """Validate `spec` across fields and decide everything the templates print (raise `ScaffoldError` naming
        the field otherwise). `tree`: the PEFT tree generated into, None for `--out`. `templates`: the
        `--templates` directory, for a planner that renders template macros itself. The plan has `name` and
        `title`."""

    @abstractmethod
    def templates(self, plan: Any, layout: Layout) -> dict[str, str]:
        """{template: output path}, paths relative to the tree or the `--out` directory."""

    @abstractmethod
    def context(self, plan: Any, layout: Layout) -> dict[str, Any]:
        """The templates' variables (`p` is the plan by convention; `year`, `spec_file` and `layout` are added)."""

    def first_party(self, plan: Any, layout: Layout) -> tuple[str, ...]:
        """Top-level modules ruff's isort treats as first party besides `peft` (the generated ones, for --out)."""
        return ()

    @abstractmethod
    def headline(self, plan: Any, layout: Layout) -> str:
        """What to call the result in one line (`Generated <title> (<headline>)`)."""

    def notes(self, plan: Any, layout: Layout) -> list[str]:
        """Lines printed after generating."""
        return []

    @abstractmethod
    def summary(self, spec: Any, source: str) -> dict[str, Any]:
        """What `check` prints: validates the spec fully and describes the output; its `name` key comes first."""

    # -- where it registers ---------------------------------------------------------------------------------------

    sites: Sequence[Site]

    @abstractmethod
    def registration(self, plan: Any) -> Any:
        """What the sites need, stored in the manifest so that `remove` needs no spec: a frozen dataclass with
        `name` and `to_data()`, read back by `registration_from_data`."""

    registration_type: Any  # the registration's class: `from_data(data)` reads it back from a manifest

    def registration_from_data(self, data: dict[str, Any]) -> Any:
        return self.registration_type.from_data(data)

    @abstractmethod
    def manifest_path(self, method_name: str) -> str: ...

    def check_tree(self, tree: PeftTree, changeset: ChangeSet, plan: Any, reg: Any, manifest: Manifest | None) -> None:
        """Refuse what cannot be registered in `tree` (names taken by methods not generated here, a tree without
        the place to register in). `manifest`: this method's, when it was generated into the tree before."""
