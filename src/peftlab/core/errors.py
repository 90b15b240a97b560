"""The base of every error a user can fix: the CLI prints its message as one line, without a traceback."""


class UserError(Exception):
    """Bad input, with a message that names the problem and the fix."""


class AdapterFileError(UserError, ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model."""


def few(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, and how many more: for listing names in a message."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
