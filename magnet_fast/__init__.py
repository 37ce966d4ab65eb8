"""magnet_fast: a fast, faithful inference engine for MAGNeT (and MusicGen on the same transformer)."""
import sys as _sys

# Ctrl-C while the CLI starts: the heavy imports below (torch, numpy) take seconds, and a KeyboardInterrupt
# raised inside a C extension's module init can be swallowed or surface as another error (numpy: "ImportError:
# cannot load module more than once per process"). For a CLI start every SIGINT is noted before it raises, so
# any failure after one is reported as the interruption it is: one line, exit code 130 (errors.py).
from magnet_fast.errors import exit_interrupted as _exit_interrupted  # noqa: E402  (stdlib only: no torch yet)
from magnet_fast.errors import interrupted as _interrupted  # noqa: E402
from magnet_fast.errors import note_interrupts as _note_interrupts  # noqa: E402

if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].endswith(("magnet-fast", "cli.py"))):
    _note_interrupts()

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
    if _interrupted():
        _exit_interrupted()
    raise
if _interrupted():                                 # a Ctrl-C that an import swallowed still stops the CLI
    _exit_interrupted()

__version__ = VERSION
__all__ = ["MagnetFast", "MusicGenFast", "MagnetConfig", "SamplingParams", "resolve_params", "convert",
           "MagnetFastError", "CheckpointError", "ConfigError", "ParameterError", "ResourceError", "NumericsError",
           "BatchSplitWarning", "__version__"]
