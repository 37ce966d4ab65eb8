"""The engines users call: ``MagnetFast`` and ``MusicGenFast`` on one base (``base``: loading, a validated
``Request``, seeds, chunking, progress, long-form windows), input checks, pairing (rescoring, hybrid) and
the registry that maps a model's kind to its engine."""
