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
        text = f"{self.where}: {self.reason}" if self.where else self.reason
        # Always one line, of bounded length, whatever the input it quotes (a file name with a line break...).
        text = text.translate(_ONE_LINE)
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


MAX_MESSAGE = 2000
_ONE_LINE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: " "}
_ONE_LINE |= {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"}
