"""User-facing errors.

Anything a user can fix (a typo in a suite, a missing checkpoint, a broken plugin) is
raised as a `DqarError`; the CLI prints its message on one line and exits with status 2.
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DqarError(Exception):
    """An error the user can fix; its message is the whole story, on one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class SuiteError(DqarError):
    """A suite file that cannot be run as written."""


class PluginError(DqarError):
    """A plugin that cannot be registered (duplicate name, missing name, import failure)."""


class ModelError(DqarError):
    """A model that cannot be built or found offline."""
