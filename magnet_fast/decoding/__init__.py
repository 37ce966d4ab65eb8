"""Decoding loops over the model: MAGNeT's mask-predict step and its parts (schedule, spans, sampling,
scoring, rescoring), MusicGen's autoregressive step (``ar``), and the one static runner under both."""
