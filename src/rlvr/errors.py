"""Error types raised by rlvr.

Every error names what is wrong (the argument, config key, file and line) so that a user
never has to read a traceback from inside torch to find the mistake.
"""

from __future__ import annotations


class RLVRError(Exception):
    """Base class of every error rlvr raises on purpose."""


class ConfigError(RLVRError, ValueError):
    """A config key or value is unknown or invalid."""


class ShapeError(RLVRError, ValueError):
    """A tensor argument has the wrong shape or dtype."""


class UnknownNameError(RLVRError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(RLVRError, ValueError):
    """A dataset row is malformed; the message names the file, line and field."""
