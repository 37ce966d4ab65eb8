"""T5 text conditioning (see docs/DESIGN.md, Pipeline) through transformers' own T5 classes.

Rows are [descriptions..., one null row per description], tokenized together (right padding, no
truncation); a null row is an empty text whose attention mask is zeroed, so after the projection and
the mask its condition is exactly zero, which is what classifier-free guidance compares against.
"""
from __future__ import annotations

from pathlib import Path

import torch

from magnet_fast.errors import CheckpointError
from magnet_fast.io.files import resolve_pretrained


class TextEncoder:
    """Tokenizer + T5 encoder; ``encode`` gives the T5 hidden states and the (null-zeroed) mask."""

    def __init__(self, name_or_path: str | Path, device: torch.device | str = "cpu",
                 allow_download: bool = False):
        from transformers import T5EncoderModel, T5Tokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        source = str(name_or_path)
        where, local = resolve_pretrained(
            source, allow_download=allow_download,
            not_found=f"T5 folder {source} not found; pass t5=PATH (CLI: --t5 PATH) to a local T5",
            not_cached=f"T5 encoder {source!r} is not in the local Hugging Face cache and downloads are off. "
                       f"Pass a local folder (API: t5=PATH; CLI: --t5 PATH), e.g. one made with "
                       f"`huggingface-cli download {source} --local-dir DIR`, or allow downloads "
                       "(--allow-download).")
        from safetensors import SafetensorError
        try:
            self.tokenizer = T5Tokenizer.from_pretrained(where, local_files_only=local)
            # safetensors only: a pickle (pytorch_model.bin) is never unpickled
            self.model = T5EncoderModel.from_pretrained(where, local_files_only=local, use_safetensors=True)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"T5 encoder {source!r} could not be loaded from {where} ({first}); pass a "
                                  "complete local T5 folder with t5=PATH (CLI: --t5 PATH)") from None
        self.model.eval().to(device=device, dtype=torch.float32)
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @torch.inference_mode()
    def encode(self, descriptions: list[str | None], null_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """[B descriptions] -> hidden [2B, L, d_model] float32 and mask [2B, L] (cond rows, then nulls).

        null_rows=True (default): every row goes through T5, as in audiocraft (its hidden states, null rows
        included: the parity mode's path, bitwise by construction). null_rows=False (``encode_condition``
        outside 'exact'): only the rows with text go through T5 (a null row's mask is zero, so the projection zeroes whatever
        T5 gives it): a null row's hidden states are zeros. The real rows keep the whole batch's padded
        length L, and a lone real row runs with one null companion row (T5 alone on one row rounds
        differently on CPU: 1e-6), so they match the all-rows batch bit for bit
        (tests/nn/test_t5_real_rows.py)."""
        from magnet_fast.checks import check_descriptions
        check_descriptions(list(descriptions))          # length cap and text checks, also for direct callers
        entries = [d if d is not None else "" for d in descriptions] + [""] * len(descriptions)
        batch = self.tokenizer(entries, return_tensors="pt", padding=True)
        mask = batch["attention_mask"].clone()
        mask[[i for i, e in enumerate(entries) if e == ""], :] = 0
        ids = batch["input_ids"].to(self.device)
        mask = mask.to(self.device)
        if null_rows:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask
        real = [i for i, e in enumerate(entries) if e != ""]
        hidden = torch.zeros(*ids.shape, self.dim, device=self.device)
        if real:
            rows = real + [len(descriptions)] * (len(real) == 1)             # a lone row: one null companion
            out = self.model(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state
            hidden[real] = out[: len(real)]
        return hidden, mask


def encode_condition(text: TextEncoder, lm, descriptions, batch_invariant: bool = False):
    """(condition [2B, L, dim], per-row condition lengths for cross-attention or None).

    Default (audiocraft's behaviour): the texts are encoded as one padded batch and cross-attention attends
    over the padding, so a row depends on its batch mates. batch_invariant: each text is encoded alone and
    padding is masked out of cross-attention (null rows keep their all-zero keys).
    """
    device = lm.device
    if not batch_invariant:
        hidden, mask = text.encode(descriptions, null_rows=lm.attention_backend == "exact")
        with torch.inference_mode():
            return lm.project_text(hidden.to(device), mask.to(device)), None
    parts = [text.encode([d], null_rows=lm.attention_backend == "exact") for d in descriptions]   # [2, L_i, width]
    n, width = len(descriptions), text.dim
    length = max(h.shape[1] for h, _ in parts)
    hidden = torch.zeros(2 * n, length, width, device=text.device)
    mask = torch.zeros(2 * n, length, dtype=torch.long, device=text.device)
    for i, (h, m) in enumerate(parts):
        hidden[i, : h.shape[1]] = h[0]
        mask[i, : m.shape[1]] = m[0]
    # null rows have zero keys/values: attending to one of them gives exactly 0, as with the padding
    lengths = tuple(max(1, int(m.sum())) for m in mask)
    with torch.inference_mode():
        return lm.project_text(hidden.to(device), mask.to(device)), lengths


def encode_condition_apart(text: TextEncoder, lm, descriptions):
    """Two-step CFG as audiocraft runs it: the B texts encoded as their own padded batch -> (cond [B, L, dim],
    null [B, 1, dim]). A null condition is all zeros whatever its padded length (zero keys and values give
    a zero cross-attention output), so one position stands for it."""
    device = lm.device
    entries = [d if d is not None else "" for d in descriptions]
    batch = text.tokenizer(entries, return_tensors="pt", padding=True)
    mask = batch["attention_mask"].clone()
    mask[[i for i, e in enumerate(entries) if e == ""], :] = 0
    with torch.inference_mode():
        hidden = text.model(input_ids=batch["input_ids"].to(text.device),
                            attention_mask=mask.to(text.device)).last_hidden_state
        cond = lm.project_text(hidden.to(device), mask.to(device))
        null = torch.zeros(len(entries), 1, cond.shape[-1], dtype=cond.dtype, device=device)
    return cond, null
