"""One exception hierarchy: every error a user can cause names the file/key/parameter and the fix."""
from __future__ import annotations


class MagnetFastError(Exception):
    """Base class of every error magnet_fast raises on purpose."""


class CheckpointError(MagnetFastError):
    """A source checkpoint or converted model folder is missing, unreadable, unsafe or inconsistent."""


class ConfigError(CheckpointError):
    """config.json (or the source xp.cfg) is missing a field or describes an unsupported model."""


class ParameterError(MagnetFastError, ValueError):
    """A generation parameter or input is out of range."""


class NumericsError(MagnetFastError, RuntimeError):
    """Non-finite values reached sampling (raised instead of emitting garbage tokens)."""


class ResourceError(MagnetFastError, RuntimeError):
    """The device ran out of memory; the message says which batch size to use instead."""


class UsageError(MagnetFastError):
    """A command-line mistake (bad flag value, unreadable prompts file, ...): one line, exit 2 (every
    MagnetFastError is, whichever frontend raised it)."""


class BatchSplitWarning(UserWarning):
    """A batch ran out of memory and is being decoded in smaller chunks (shown by default, unlike
    ResourceWarning)."""
