"""Fixtures for the fine-tuning tests: the tiny audiocraft checkpoints converted once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
TRAIN_REF = FIXTURES / "ac_train"
CHECKPOINTS = {"10s": FIXTURES / "ac_ref" / "magnet_tiny", "30s": FIXTURES / "ac_ref_30s" / "magnet_tiny"}


class TrainReference:
    def __init__(self, folder: Path):
        self.folder = folder
        self.tensors = load_file(str(folder / "reference.safetensors"))
        self.meta = json.loads((folder / "reference.json").read_text())


@pytest.fixture(scope="session")
def train_ref() -> TrainReference:
    return TrainReference(TRAIN_REF)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Callable: variant ('10s' / '30s') -> converted model folder (cached)."""
    import magnet_fast as mf
    root = tmp_path_factory.mktemp("train-models")
    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            cache[variant] = mf.convert(CHECKPOINTS[variant], root / variant)
        return cache[variant]
    return get


def write_tiny_model(folder: Path, *, dim: int = 64, heads: int = 4, layers: int = 2, card: int = 64,
                     seconds: float = 1.0, seed: int = 0) -> Path:
    """A converted MAGNeT folder with random weights (torch's default init), the tiny T5 copied in: small
    enough that training steps take milliseconds."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from magnet_fast.config import MagnetConfig, SamplingParams
    from magnet_fast.nn.model import MagnetLM
    cfg = MagnetConfig(dim=dim, num_heads=heads, num_layers=layers, card=card, segment_duration=seconds,
                       t5_name="t5", t5_dim=768, weights_dtype="float32",
                       generation=SamplingParams(decoding_steps=(2, 2, 2, 2)))
    torch.manual_seed(seed)
    lm = MagnetLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(folder / "model.safetensors"))
    cfg.save(folder)
    shutil.copytree(T5_TINY, folder / "t5")
    return folder


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_model(tmp_path / "tiny")


def write_token_data(folder: Path, tokens, texts, lengths=None) -> Path:
    """A prepared data folder (index.jsonl + one shard per clip) holding ``tokens`` [N, n_q, T] as is."""
    import torch
    from safetensors.torch import save_file
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (t, text) in enumerate(zip(tokens, texts, strict=True)):
        length = int(lengths[i]) if lengths is not None else t.shape[-1]
        shard = f"shards/{i + 1:06d}.safetensors"
        save_file({"tokens": t[None].to(torch.int16).contiguous(),
                   "lengths": torch.tensor([length], dtype=torch.int32)}, str(folder / shard))
        rows.append({"file": f"clip{i}.wav", "text": text, "shard": shard, "segments": 1})
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


CLIP_TEXTS = ["calm piano", "energetic edm with drums and bass", "funky disco groove", "slow jazz guitar"]


def clips(card: int = 64, frames: int = 10, n: int = 4, seed: int = 1):
    import torch
    return torch.randint(0, card, (n, 4, frames), generator=torch.Generator().manual_seed(seed))
