"""Checks of plain values every floor needs (descriptions, sample rates), each raising ParameterError with
the fix in the message; the engines' other input checks are in ``engines/inputs.py``."""
from __future__ import annotations

from magnet_fast.errors import ParameterError


def check_descriptions(descriptions) -> list[str | None]:
    if isinstance(descriptions, str) or not isinstance(descriptions, (list, tuple)):
        raise ParameterError("descriptions must be a list of strings (or None for unconditional "
                             f"rows), got {type(descriptions).__name__}")
    if not descriptions:
        raise ParameterError("descriptions is empty: pass at least one text (or None)")
    bad = [d for d in descriptions if d is not None and not isinstance(d, str)]
    if bad:
        raise ParameterError(f"descriptions must be str or None, got {type(bad[0]).__name__}")
    for i, d in enumerate(descriptions):
        if d is None:
            continue
        if len(d) > MAX_DESCRIPTION_CHARS:
            raise ParameterError(f"description {i} is {len(d)} characters, over the {MAX_DESCRIPTION_CHARS}-character "
                                 f"cap: T5 was trained on texts of at most {T5_TRAINED_TOKENS} tokens (about 2,000 "
                                 "characters) and the tokenizer does not truncate; shorten it")
        try:
            d.encode("utf-8")
        except UnicodeEncodeError:
            raise ParameterError(f"description {i} holds a lone surrogate (e.g. from a JSON '\\ud800' escape), "
                                 "which is not text; fix the string") from None
    return list(descriptions)


MAX_DESCRIPTION_CHARS = 4096      # characters per description (checked before tokenizing; T5 was trained on <= 512 tokens)
T5_TRAINED_TOKENS = 512


MIN_RATE, MAX_RATE = 1_000, 384_000      # audio sample rates accepted anywhere (Hz)


def check_sample_rate(rate, name: str = "sample_rate") -> int:
    """An integer sample rate in MIN_RATE..MAX_RATE (numpy integers accepted): a rate of 10**12 or 2**31 - 1
    would otherwise size a resampling kernel or a loudness FFT in gigabytes."""
    import operator
    if isinstance(rate, bool) or type(rate).__name__ == "bool_":
        raise ParameterError(f"{name} must be a positive integer (Hz), got {rate!r}")
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    try:
        rate = operator.index(rate)
    except TypeError:
        raise ParameterError(f"{name} must be a positive integer (Hz), got {rate!r}") from None
    if rate < 1:
        raise ParameterError(f"{name} must be a positive integer (Hz), got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ParameterError(f"{name} must be in {MIN_RATE}..{MAX_RATE} Hz, got {rate}; resample the audio first")
    return rate
