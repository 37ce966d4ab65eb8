"""magnet_fast: a fast, faithful inference engine for MAGNeT (and MusicGen on the same transformer)."""
import sys as _sys

# Ctrl-C while the CLI starts: the heavy imports below (torch, numpy) take seconds, and a KeyboardInterrupt
# raised inside a C extension's module init can surface as a different error (numpy: "ImportError: cannot
# load module more than once per process"). For a CLI start we note every SIGINT before raising, so any
# exception that follows one is reported as the interruption it is: one line, exit code 130.
_INTERRUPTS: list[int] = []


def _cli_start() -> bool:
    argv0 = _sys.argv[0] if _sys.argv else ""
    return argv0 == "-m" or argv0.endswith(("magnet-fast", "cli.py"))


def _note_interrupt(signum, frame):
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def interrupted() -> bool:
    """True once the CLI process got a SIGINT (the CLI reports any error after that as the interruption)."""
    return bool(_INTERRUPTS)


if _cli_start():
    import signal as _signal
    try:
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
            _signal.signal(_signal.SIGINT, _note_interrupt)
    except ValueError:                          # not the main thread: leave signals alone
        pass

try:
    from magnet_fast.config import VERSION, MagnetConfig
    from magnet_fast.engines.magnet import MagnetFast
    from magnet_fast.engines.musicgen import MusicGenFast
    from magnet_fast.errors import (
        BatchSplitWarning,
        CheckpointError,
        ConfigError,
        MagnetFastError,
        NumericsError,
        ParameterError,
        ResourceError,
    )
    from magnet_fast.io.convert import convert
    from magnet_fast.params import SamplingParams, resolve_params
except BaseException:
    if _INTERRUPTS:
        print("magnet-fast: interrupted", file=_sys.stderr)
        raise SystemExit(130) from None
    raise
if _INTERRUPTS:                                 # a Ctrl-C that an import swallowed still stops the CLI
    print("magnet-fast: interrupted", file=_sys.stderr)
    raise SystemExit(130)

__version__ = VERSION
__all__ = ["MagnetFast", "MusicGenFast", "MagnetConfig", "SamplingParams", "resolve_params", "convert",
           "MagnetFastError", "CheckpointError", "ConfigError", "ParameterError", "ResourceError", "NumericsError",
           "BatchSplitWarning", "__version__"]
