"""The base of every error a user can fix: the CLI prints its message as one line, without a traceback."""


class UserError(Exception):
    """Bad input, with a message that names the problem and the fix."""


class Interrupted(Exception):
    """A run stopped on a signal after saving its work: the CLI prints the message (where the work is, how to
    continue) and exits with ``exit_code`` (128 + the signal's number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AdapterFileError(UserError, ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model."""


def few(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, and how many more: for listing names in a message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
