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


# ----------------------------------------------------------------------------------- Ctrl-C in the CLI
# A KeyboardInterrupt raised in the middle of an import is not safe: numpy swallows one raised inside its
# own import or turns it into "ImportError: cannot load module more than once per process", and an import
# that C++ started (torch imports triton, sympy, dynamo lazily) ends in std::terminate, a C++ abort with a
# traceback. So under `note_interrupts` a SIGINT that arrives inside an import is held until the import
# is over, then delivered; a second Ctrl-C while one is held is delivered at once.
_INTERRUPTS: list[int] = []


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _deliver_after_import(main_ident: int) -> None:
    import _thread
    import sys
    import time
    while True:
        time.sleep(0.02)
        frame = sys._current_frames().get(main_ident)
        if frame is None:                      # the main thread has ended
            return
        if not _in_import(frame):
            _thread.interrupt_main()           # runs _note_interrupt in the main thread, outside the import
            return


def _note_interrupt(signum, frame):
    held = len(_INTERRUPTS)
    _INTERRUPTS.append(signum)
    if held == 0 and _in_import(frame):        # the first Ctrl-C, inside an import: hold it
        import threading
        threading.Thread(target=_deliver_after_import, args=(threading.main_thread().ident,), daemon=True,
                         name="magnet-fast-interrupt").start()
        return
    raise KeyboardInterrupt


def note_interrupts() -> None:
    """Record every SIGINT of this process and raise KeyboardInterrupt for it as usual, but never inside an
    import (see above); the CLI calls this before its heavy imports. Leaves a handler other than Python's
    default alone, and does nothing off the main thread."""
    import signal
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _note_interrupt)
    except ValueError:
        pass


def interrupted() -> bool:
    """True once this process got a SIGINT under `note_interrupts` (the CLI then reports any failure as
    the interruption)."""
    return bool(_INTERRUPTS)


def exit_interrupted():
    """End a CLI process that got Ctrl-C: one line, exit status 130, now (``os._exit`` after flushing:
    a delay sweep of Ctrl-C during start-up ended 6 of 50 runs with status -2, killed by SIGINT after
    ``sys.exit(130)``, when the interrupt had landed in code that dataclasses runs through ``exec``)."""
    import os
    import sys
    print("magnet-fast: interrupted", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)
