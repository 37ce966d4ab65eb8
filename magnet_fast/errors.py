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


# ----------------------------------------------------------------------------------- Ctrl-C at start-up
_INTERRUPTS: list[int] = []


def _note_interrupt(signum, frame):
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def note_interrupts() -> None:
    """Record every SIGINT of this process before raising KeyboardInterrupt as usual (the CLI calls this
    before its heavy imports). Leaves a handler other than Python's default alone, and does nothing off
    the main thread."""
    import signal
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _note_interrupt)
    except ValueError:
        pass


def interrupted() -> bool:
    """True once this process got a SIGINT under `note_interrupts` (the CLI then reports any failure as
    the interruption: an import cut short by Ctrl-C can fail with another error or swallow it)."""
    return bool(_INTERRUPTS)
