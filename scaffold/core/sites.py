"""Registry sites, and the one loop that registers (or unregisters) a method at every site of its kind.

A `Site` is one place of a PEFT tree that knows about a method: a Python module edited with libcst (an enum
member, an import, a mapping entry, a row of a test matrix), a Markdown page, or the docs' YAML toctree. Each kind
lists its sites in order (`Kind.sites`); each site turns a file's text into the text with the method registered
(`apply`) and back (`remove`, with `remove(apply(x)) == x`). Sites never write: the loop stacks their results into a
`ChangeSet`, so a command's edits are applied together or not at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.register.transforms import Edit, EditContext, run
from scaffold.register.tree import PeftTree


Status = Literal["changed", "already registered", "skipped", "removed", "not registered"]


class Site(ABC):
    """One registry location. `reg` is the kind's registration object (it has at least a `name`)."""

    name: str
    relpath: str  # may contain "{name}", the method name
    # False: PEFT itself leaves this out for some complete methods, so `doctor` reports it as optional, not a gap.
    required: bool = True

    def path(self, method_name: str) -> str:
        return self.relpath.format(name=method_name)

    def skip_reason(self, tree: PeftTree, reg: Any) -> str | None:
        """Why this site does not apply to registering `reg` in `tree` (None: it applies)."""
        return None

    @abstractmethod
    def apply(self, source: str | None, reg: Any) -> str | None:
        """The file's new text with `reg` registered (unchanged if it already is). None deletes the file."""

    @abstractmethod
    def remove(self, source: str | None, reg: Any) -> str | None:
        """The inverse of `apply`: `remove(apply(x)) == x`."""

    def _require(self, source: str | None, method_name: str) -> str:
        if source is None:
            raise ScaffoldError(self.path(method_name), "file not found; expected in a PEFT source tree")
        return source

    def __repr__(self) -> str:
        return f"<site {self.name}: {self.relpath}>"


EditFactory = Callable[[EditContext], Edit]


class EditSite(Site):
    """A site in a Python module, edited by libcst transforms (`scaffold.register.transforms`), run in order."""

    @abstractmethod
    def edits(self, reg: Any) -> list[EditFactory]:
        """What `apply` runs."""

    @abstractmethod
    def inverse_edits(self, reg: Any) -> list[EditFactory]:
        """What `remove` runs: the inverse edits, in reverse order."""

    def apply(self, source: str | None, reg: Any) -> str:
        return run(self._require(source, reg.name), self.path(reg.name), *self.edits(reg))

    def remove(self, source: str | None, reg: Any) -> str:
        return run(self._require(source, reg.name), self.path(reg.name), *self.inverse_edits(reg))


@dataclass(frozen=True)
class SiteResult:
    site: str
    relpath: str
    status: Status
    detail: str = ""  # for "skipped": why

    def __str__(self) -> str:
        return f"{self.site} ({self.relpath}): {self.status}" + (f": {self.detail}" if self.detail else "")


def register(changeset: ChangeSet, tree: PeftTree, reg: Any, sites: Sequence[Site]) -> list[SiteResult]:
    """Stack the registration edits of every site into `changeset` (on top of what it already holds)."""
    return [_edit(changeset, tree, reg, site, add=True) for site in sites]


def unregister(changeset: ChangeSet, tree: PeftTree, reg: Any, sites: Sequence[Site]) -> list[SiteResult]:
    """Stack the inverse edits, last site first; the results are in the sites' order."""
    return [_edit(changeset, tree, reg, site, add=False) for site in reversed(sites)][::-1]


def _edit(changeset: ChangeSet, tree: PeftTree, reg: Any, site: Site, *, add: bool) -> SiteResult:
    rel = site.path(reg.name)
    before = changeset.read(rel)
    reason = site.skip_reason(tree, reg)
    if reason is not None and (add or before is None):
        return SiteResult(site.name, rel, "skipped", reason)
    if not add and before is None:
        return SiteResult(site.name, rel, "not registered")
    after = site.apply(before, reg) if add else site.remove(before, reg)
    if after == before:
        return SiteResult(site.name, rel, "already registered" if add else "not registered")
    if after is None:
        changeset.delete(rel)
    else:
        changeset.write(rel, after)
    return SiteResult(site.name, rel, "changed" if add else "removed")
