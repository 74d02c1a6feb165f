"""User-facing errors.

Every problem a user can cause (a bad spec, an unrecognised PEFT tree, a refused edit) is raised as a
`ScaffoldError`; the CLI prints it as one line and exits with its code, never with a traceback.
"""

from __future__ import annotations


BAD_INPUT = 2
FAILURE = 1


class ScaffoldError(Exception):
    """A user-facing error: one line naming `where` (a spec field, a file) and the reason.

    Exit code 2 means bad input, 1 means the work itself failed.
    """

    def __init__(self, where: str, reason: str, exit_code: int = BAD_INPUT) -> None:
        super().__init__(where, reason)
        self.where = where
        self.reason = reason
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason
