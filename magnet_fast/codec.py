"""EnCodec, MAGNeT's audio tokenizer, at run time: transformers' ``EncodecModel`` with audiocraft's calling
conventions (see docs/DESIGN.md, Pipeline).

``Codec.load`` reads what a converted model records (config.json's "codec"): a converted full export
(a transformers folder, written by ``magnet_fast.convert.codec.convert_codec``) or a hub pointer.
``decode(codes)`` returns what ``compression_model.decode(codes, None)`` returns, ``encode(wav,
sample_rate)`` converts the audio like ``audiocraft.data.audio_utils.convert_audio`` (resample, then mix
channels) and returns the codes.

Only ``magnet_fast.errors`` and ``magnet_fast._io`` are imported here (tests load this module alone).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from magnet_fast._io import resolve_pretrained, serialised_load
from magnet_fast.errors import CheckpointError, ParameterError

# names audiocraft's CompressionModel.get_pretrained resolves to something that is not an EnCodec
NON_ENCODEC_POINTERS = ("dac_44khz", "dac_24khz", "debug_compression_model")


def _download_hint(name: str) -> str:
    return (f"pass codec=PATH (CLI: --codec PATH) to a local EnCodec folder in transformers format, allow the "
            f"download (allow_download=True / --allow-download), or fetch it once with "
            f"`huggingface-cli download {name} --local-dir DIR` and pass codec=DIR")


class Codec:
    """transformers' EncodecModel with audiocraft's compression-model calling conventions."""

    def __init__(self, model, source: str = "<memory>"):
        self.model = model.eval()
        self.source = source
        cfg = model.config
        # audiocraft's HFEncodecCompressionModel: the bandwidth with the most codebooks is used
        fr = cfg.sampling_rate / self.hop_length
        counts = [int(bw * 1000 / (fr * math.log2(cfg.codebook_size))) for bw in cfg.target_bandwidths]
        self._n_q = max(counts)
        self._bandwidth = cfg.target_bandwidths[counts.index(self._n_q)]

    # ------------------------------------------------------------------ loading
    @classmethod
    @serialised_load                                  # lazy transformers imports are not thread-safe
    def load(cls, model_dir: Path, note: dict, device="cpu", override: str | Path | None = None,
             allow_download: bool = False) -> Codec:
        """Load the codec a converted model records in ``note`` (config.json's "codec").

        full -> ``model_dir / note["path"]``; pointer -> transformers' hub model ``note["pretrained"]``
        from the local cache unless ``allow_download`` (audiocraft itself uses that hub model for pointer
        files). ``override`` (codec=PATH) wins over both: a local transformers EnCodec folder or a hub name.
        """
        if not isinstance(note, dict) or note.get("kind") not in ("full", "pointer"):
            raise CheckpointError(f"{model_dir}: config.json's codec entry {note!r} is neither 'full' nor "
                                  "'pointer'; re-run the conversion")
        if override is not None:
            return cls._from_source(str(override), device, allow_download, what=f"codec override '{override}'")
        if note["kind"] == "full":
            if not isinstance(note.get("path"), str):
                raise CheckpointError(f"{model_dir}: config.json's codec entry has no 'path'; re-run the conversion")
            folder = Path(model_dir) / note["path"]
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: converted codec folder is missing; re-run the conversion or "
                                      "pass codec=PATH (CLI: --codec PATH)")
            return cls._from_source(str(folder), device, False, what="converted codec")
        name = note.get("pretrained")
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{model_dir}: config.json's pointer codec has no 'pretrained' name")
        if name in NON_ENCODEC_POINTERS:
            raise CheckpointError(f"{model_dir}: the codec '{name}' is not an EnCodec; magnet_fast only runs "
                                  "EnCodec codecs (pass codec=PATH to one)")
        return cls._from_source(name, device, allow_download, what=f"hub codec '{name}'")

    @classmethod
    def _from_source(cls, source: str, device, allow_download: bool, what: str) -> Codec:
        from transformers import EncodecModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(source).expanduser()
        if path.is_file():
            raise CheckpointError(f"{source}: the {what} must be a folder with config.json + model.safetensors "
                                  "(transformers format); convert an audiocraft compression_state_dict.bin "
                                  "with magnet_fast.convert.codec.convert_codec (or `magnet-fast convert`) first")
        if path.is_dir() and not (path / "config.json").is_file():
            raise CheckpointError(f"{source}: the {what} folder has no config.json; expected an EnCodec "
                                  "folder in transformers format (config.json + model.safetensors)")
        where, local = resolve_pretrained(
            source, allow_download=allow_download,
            not_found=f"{source}: no such folder (the {what}); pass codec=PATH to an EnCodec folder in "
                      "transformers format",
            not_cached=f"the {what} is not in the local Hugging Face cache and downloads are off; "
                       f"{_download_hint(source)}")
        try:
            model = EncodecModel.from_pretrained(where, local_files_only=local, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - every failure becomes one message with the fix
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            if path.is_dir():
                raise CheckpointError(f"{source}: cannot load the {what} ({first}); re-run the conversion") from None
            raise CheckpointError(f"cannot load the {what} ({first}); {_download_hint(source)}") from None
        return cls(model.to(device), source)

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.model.config.upsampling_ratios))

    @property
    def frame_rate(self) -> int | float:
        fr = self.sample_rate / self.hop_length
        return int(fr) if fr == int(fr) else fr

    @property
    def n_q(self) -> int:
        return self._n_q

    @property
    def card(self) -> int:
        return int(self.model.config.codebook_size)

    @property
    def channels(self) -> int:
        return int(self.model.config.audio_channels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ tokens <-> audio
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K, T] (K <= n_q, values in [0, card)) -> audio [B, channels, T * hop_length], float32:
        exactly audiocraft's ``compression_model.decode(codes, None)``."""
        if not isinstance(codes, torch.Tensor):
            raise ParameterError("codes must be a torch.Tensor of codec tokens [B, K, T]")
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            raise ParameterError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if codes.dim() != 3:
            raise ParameterError(f"codes must have shape [B, K, T], got {tuple(codes.shape)}")
        b, k, t = codes.shape
        if b < 1 or t < 1 or not 1 <= k <= self.n_q:
            raise ParameterError(f"codes shape {tuple(codes.shape)}: need B >= 1, 1 <= K <= {self.n_q} "
                                 f"codebooks and T >= 1 frames")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.card:
            bad = lo if lo < 0 else hi
            raise ParameterError(f"codes must lie in [0, {self.card}) (the codebook size), found {bad}")
        with torch.inference_mode():
            return self.model.decode(codes.to(self.device, torch.long)[None], [None])[0]

    def convert_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [S] / [C, S] / [B, C, S] at ``sample_rate`` -> float32 [B, channels, S'] at the codec's rate,
        like audiocraft's ``convert_audio``: resample first (julius.resample_frac), then mix the channels
        (mean to mono, repeat mono, or keep the first channels)."""
        if not isinstance(wav, torch.Tensor):
            raise ParameterError("wav must be a torch.Tensor of audio samples")
        if not (wav.is_floating_point()):
            raise ParameterError(f"wav must be floating point audio (e.g. in [-1, 1]), got dtype {wav.dtype}")
        if not 1 <= wav.dim() <= 3:
            raise ParameterError(f"wav must be [S], [C, S] or [B, C, S], got shape {tuple(wav.shape)}")
        while wav.dim() < 3:
            wav = wav.unsqueeze(0)
        if min(wav.shape) < 1:
            raise ParameterError(f"wav must not be empty, got shape {tuple(wav.shape)}")
        if not bool(torch.isfinite(wav).all()):
            raise ParameterError("wav contains NaN or infinite samples")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) \
                or sample_rate != int(sample_rate) or sample_rate <= 0:
            raise ParameterError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        sample_rate = int(sample_rate)
        wav = wav.to(self.device, torch.float32)
        if sample_rate != self.sample_rate:
            from magnet_fast.audio import resample  # julius where cheap, bounded otherwise (issue 24)
            wav = resample(wav, sample_rate, self.sample_rate)
            if wav.shape[-1] < 1:
                raise ParameterError("wav is too short to be resampled to the codec's sample rate")
        src = wav.shape[1]
        if src == self.channels:
            return wav
        if self.channels == 1:
            return wav.mean(dim=-2, keepdim=True)
        if src == 1:
            return wav.expand(wav.shape[0], self.channels, wav.shape[-1])
        if src > self.channels:
            return wav[:, : self.channels]
        raise ParameterError(f"wav has {src} channels; the codec takes {self.channels} (or mono)")

    def encode(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [S] / [C, S] / [B, C, S] at ``sample_rate`` -> codes [B, n_q, ceil(S' / hop_length)] (long):
        audiocraft's ``convert_audio`` followed by ``compression_model.encode(wav)[0]``."""
        wav = self.convert_audio(wav, sample_rate)
        with torch.inference_mode():
            codes = self.model.encode(wav, None, self._bandwidth)[0]
        return codes[0].long()
