"""The project's exceptions, in one leaf module (it imports nothing), so every layer can raise them.

- :class:`ConfigError` (a ``ValueError``): a setting, a group spec or a params file that cannot be used; the
  message names the key or word, what was wrong and what is allowed.
- :class:`DataError` (a ``RuntimeError``): an input that is missing, corrupt or cannot be fetched; the message
  says what to run or where to get it.

Both derive from :class:`EquituneError`. The pipeline's stage runner turns any ``EquituneError`` into its message
and exit code 2, before the stage writes anything; library users catch them like any ``ValueError`` /
``RuntimeError``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "EquituneError", "GroupSpecError"]


class EquituneError(Exception):
    """Base of the errors that carry a message meant for the user (not a bug)."""


class ConfigError(EquituneError, ValueError):
    """A setting that cannot be used: the message names the key, the value and what is allowed."""


class GroupSpecError(ConfigError):
    """A group specification or a vocabulary binding that cannot be built."""


class DataError(EquituneError, RuntimeError):
    """An input that is missing, corrupt or cannot be fetched: the message says what to do."""
