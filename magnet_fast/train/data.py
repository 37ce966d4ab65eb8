"""Training data: ``prepare`` (audio folder -> token shards + index.jsonl) and ``TokenDataset``.

A data folder holds ``index.jsonl`` (one line per audio file: ``{"file", "text", "shard", "segments"}`` or
``{"file", "error"}``) and ``shards/NNNNNN.safetensors`` (``tokens`` int16 [S, n_q, T], ``lengths`` int32 [S]:
valid frames per segment; a short tail is padded and its padded frames leave the loss).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from magnet_fast.errors import MagnetFastError, ParameterError

AUDIO_EXTS = (".wav", ".flac", ".ogg")
INDEX = "index.jsonl"
MAX_INDEX_BYTES = 1 << 28          # 256 MiB of index: far beyond any folder this targets, bounded anyway


class DataError(MagnetFastError, ValueError):
    """A data folder or one of its files is missing, malformed or inconsistent with the model."""


def _captions(audio_dir: Path) -> dict[str, str]:
    path = audio_dir / "captions.jsonl"
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            out[str(item["file"])] = str(item["description"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{n} is not a JSON object with \"file\" and \"description\"; fix that line") from None
    return out


def caption_for(audio: Path, captions: dict[str, str], root: Path) -> str | None:
    """The text of one audio file: NAME.txt, NAME.json {"description": ...}, captions.jsonl, else None."""
    txt, js = audio.with_suffix(".txt"), audio.with_suffix(".json")
    if txt.is_file():
        return txt.read_text(encoding="utf-8").strip() or None
    if js.is_file():
        try:
            item = json.loads(js.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DataError(f"caption file {js.name} is not JSON ({e}); write {{\"description\": \"...\"}}") from None
        if not isinstance(item, dict) or not isinstance(item.get("description"), str):
            raise DataError(f"caption file {js.name} has no \"description\" string")
        return item["description"]
    return captions.get(str(audio.relative_to(root)))


def _read_index(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise DataError(f"{path} is larger than {MAX_INDEX_BYTES} bytes; is it an index.jsonl?")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{n} is not JSON; delete the line (that file is redone)") from None
            if not isinstance(row, dict) or "file" not in row:
                raise DataError(f"{path}:{n} is not an index entry; delete the line (that file is redone)")
            rows.append(row)
    return rows


def _write_index(path: Path, rows: list[dict]) -> None:
    from magnet_fast.io.files import atomic_write_bytes
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def segment_audio(wav: torch.Tensor, segment_samples: int) -> tuple[torch.Tensor, list[int]]:
    """[C, S] -> ([N, C, segment_samples] zero-padded segments, valid samples of each)."""
    s = wav.shape[-1]
    n = max(1, math.ceil(s / segment_samples))
    padded = torch.zeros(wav.shape[0], n * segment_samples, dtype=wav.dtype)
    padded[:, :s] = wav
    return padded.view(wav.shape[0], n, segment_samples).transpose(0, 1), [
        min(segment_samples, s - i * segment_samples) for i in range(n)]


def prepare(audio_dir, out_dir, model_dir, *, device="cpu", progress: bool = True) -> dict:
    """Encode every audio file under ``audio_dir`` into ``out_dir`` (resumable: files already in the index
    are skipped; files that fail are recorded with their error and retried on the next run).
    Returns {"done", "skipped", "failed", "segments"}."""
    import soundfile as sf
    from safetensors.torch import save_file
    from tqdm import tqdm

    from magnet_fast.config import MagnetConfig
    from magnet_fast.io.codec import Codec
    from magnet_fast.io.files import atomic_file
    audio_dir, out_dir, model_dir = Path(audio_dir), Path(out_dir), Path(model_dir)
    if not audio_dir.is_dir():
        raise DataError(f"audio folder {audio_dir} not found")
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTS)}) under {audio_dir}; point AUDIO_DIR at a "
                        "folder of WAV/FLAC/OGG files")
    cfg = MagnetConfig.load(model_dir)
    if cfg.kind != "magnet":
        raise DataError(f"{model_dir} is a {cfg.kind} model; prepare data with the MAGNeT model you fine-tune")
    captions = _captions(audio_dir)
    index_path = out_dir / INDEX
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    rows = _read_index(index_path)
    done = {r["file"]: r for r in rows if "error" not in r and (out_dir / r.get("shard", "")).is_file()}
    rows = list(done.values())                   # failed entries are retried
    codec = Codec.load(model_dir, cfg.codec or {}, device=device) if cfg.codec else None
    if codec is None:
        raise DataError(f"{model_dir} has no codec; convert the model with its compression_state_dict.bin")
    seg_samples = int(round(cfg.segment_duration * codec.sample_rate))
    frames = cfg.frames
    next_id = 1 + max((int(Path(r["shard"]).stem) for r in rows), default=0)
    stats = {"done": 0, "skipped": 0, "failed": 0, "segments": 0}
    for path in tqdm(files, desc="prepare", unit="file", disable=not progress):
        rel = str(path.relative_to(audio_dir))
        if rel in done:
            stats["skipped"] += 1
            continue
        try:
            text = caption_for(path, captions, audio_dir)
            try:
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001  (libsndfile: any unreadable/corrupt file)
                raise DataError(f"not readable audio ({str(e).strip().splitlines()[0] if str(e) else e})") from None
            if data.size == 0:
                raise DataError("empty audio")
            wav = codec.convert_audio(torch.from_numpy(data.T.copy()), sr)[0].cpu()     # [C, S] at codec rate
            segments, valid = segment_audio(wav, seg_samples)
            codes = torch.stack([codec.encode(seg, codec.sample_rate)[0, :, :frames] for seg in segments])
            lengths = torch.tensor([max(1, min(frames, math.floor(v / codec.sample_rate * cfg.frame_rate)))
                                    for v in valid], dtype=torch.int32)
            shard = f"shards/{next_id:06d}.safetensors"
            with atomic_file(out_dir / shard) as tmp:
                save_file({"tokens": codes.to(torch.int16).contiguous(), "lengths": lengths}, tmp)
            next_id += 1
            rows.append({"file": rel, "text": text, "shard": shard, "segments": len(segments),
                         "frames": frames, "n_q": cfg.n_q})
            stats["done"] += 1
            stats["segments"] += len(segments)
        except MagnetFastError as e:
            rows.append({"file": rel, "error": str(e)})
            stats["failed"] += 1
        _write_index(index_path, rows)
    return stats


class TokenDataset:
    """Every segment of a prepared folder in memory: ``tokens`` [N, n_q, T] long, ``lengths`` [N], ``texts``."""

    def __init__(self, data_dir, n_q: int, frames: int, card: int):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        data_dir = Path(data_dir)
        rows = [r for r in _read_index(data_dir / INDEX) if "error" not in r]
        if not (data_dir / INDEX).is_file():
            raise DataError(f"{data_dir} has no {INDEX}; run `magnet-fast prepare AUDIO_DIR --out {data_dir}` first")
        if not rows:
            raise DataError(f"{data_dir}/{INDEX} lists no prepared file; check the errors recorded there")
        toks, lens, texts = [], [], []
        for r in rows:
            try:
                shard = load_file(str(data_dir / r["shard"]))
            except (OSError, SafetensorError, KeyError) as e:
                raise DataError(f"shard {r.get('shard')} of {r['file']} is unreadable ({e}); re-run prepare") from None
            t = shard.get("tokens")
            if t is None or t.dim() != 3 or t.shape[1] != n_q or t.shape[2] != frames:
                raise DataError(f"shard {r['shard']} holds tokens {None if t is None else list(t.shape)}, the "
                                f"model takes [*, {n_q}, {frames}]: prepare the data with this model")
            t = t.long()
            if int(t.min()) < 0 or int(t.max()) >= card:
                raise DataError(f"shard {r['shard']} has token ids outside [0, {card}): prepare the data with this model")
            toks.append(t)
            lens.append(shard["lengths"].long())
            texts += [r.get("text")] * t.shape[0]
        self.tokens = torch.cat(toks)
        self.lengths = torch.cat(lens)
        self.texts = texts

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, position: int, size: int, seed: int) -> tuple[torch.Tensor, list, torch.Tensor]:
        """``size`` samples starting at stream ``position``: epoch e = position // N visits the samples in
        ``randperm(N)`` order from a generator seeded (seed, e), so any position is reproducible."""
        n = len(self)
        idx, perms = [], {}
        for p in range(position, position + size):
            epoch, i = divmod(p, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            idx.append(int(perms[epoch][i]))
        ix = torch.tensor(idx)
        return self.tokens[ix], [self.texts[i] for i in idx], self.lengths[ix]


def check_audio_dir(path) -> None:
    if not Path(path).exists():
        raise ParameterError(f"audio folder {path} not found")
