"""The project's one error type for bad input (config, study files, data on disk), and the
"did you mean" hint its messages share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["UserError", "did_you_mean"]


class UserError(Exception):
    """Bad input from the user. The message names the cause; the CLI prints it without traceback."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the valid choice closest to ``name``, or ``""`` if none is close."""
    hint = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else ""
