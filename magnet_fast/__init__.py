"""magnet_fast: a fast, faithful inference engine for MAGNeT."""
__version__ = "0.1.0"
