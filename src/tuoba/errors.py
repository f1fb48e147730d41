"""Errors that reach people: one sentence, a hint, an exit code."""

from __future__ import annotations

from typing import NoReturn


class TuobaError(Exception):
    """A problem the user can act on. The CLI prints it without a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(TuobaError):
    """Bad input: an unknown name, a malformed file, a bad flag value."""

    exit_code = 2


class HostToolError(TuobaError):
    """A host tool is missing or too old."""

    exit_code = 3


class BuildError(TuobaError):
    """A build step failed."""

    exit_code = 4


class GuestCheckError(TuobaError):
    """The image booted (or did not) and its checks failed."""

    exit_code = 5


def die(message: str, hint: str | None = None, kind: type[TuobaError] = TuobaError) -> NoReturn:
    raise kind(message, hint=hint)
