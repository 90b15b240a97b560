"""The base of every error a user can fix: the CLI prints its message as one line, without a traceback."""


class UserError(Exception):
    """Bad input, with a message that names the problem and the fix."""
