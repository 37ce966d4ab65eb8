"""magnet_fast: a fast, faithful inference engine for MAGNeT (and MusicGen on the same transformer)."""
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
except KeyboardInterrupt:                       # Ctrl-C while the CLI starts (torch imports): one line
    import sys as _sys
    if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].endswith(("magnet-fast", "cli.py"))):
        print("magnet-fast: interrupted", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__version__ = VERSION
__all__ = ["MagnetFast", "MusicGenFast", "MagnetConfig", "SamplingParams", "resolve_params", "convert",
           "MagnetFastError", "CheckpointError", "ConfigError", "ParameterError", "ResourceError", "NumericsError",
           "BatchSplitWarning", "__version__"]
