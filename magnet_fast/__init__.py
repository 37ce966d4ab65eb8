"""magnet_fast: a fast, faithful inference engine for MAGNeT."""
from magnet_fast.api import MagnetFast
from magnet_fast.config import GenerationDefaults, MagnetConfig
from magnet_fast.convert import convert
from magnet_fast.errors import (
    BatchSplitWarning,
    CheckpointError,
    ConfigError,
    MagnetFastError,
    NumericsError,
    ParameterError,
    ResourceError,
)

__version__ = "0.1.0"
__all__ = ["MagnetFast", "MagnetConfig", "GenerationDefaults", "convert", "MagnetFastError",
           "CheckpointError", "ConfigError", "ParameterError", "ResourceError", "NumericsError",
           "BatchSplitWarning", "__version__"]
