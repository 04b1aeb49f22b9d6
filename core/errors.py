"""The project's one error type for bad input (config, study files, data on disk)."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from the user. The message names the cause; the CLI prints it without traceback."""
