"""A fake local Hugging Face hub cache holding tiny models under the real hub names (offline tests of
``magnet_fast.io.hub`` / ``magnet_fast.compat`` and the audiocraft demo notebooks).

Layout as huggingface_hub writes it: ``<cache>/models--<org>--<name>/{blobs/<sha256>, refs/main,
snapshots/<commit>/<file> -> ../../blobs/<sha256>}``. What goes in (``build``):

* ``facebook/magnet-small-10secs``, ``facebook/magnet-small-30secs``: the audiocraft-made parity fixtures
  (tests/fixtures/ac_ref{,_30s}/magnet_tiny: state_dict.bin + a pointer compression_state_dict.bin
  {'pretrained': 'facebook/encodec_32khz'}; card 512, t5-base width);
* ``facebook/encodec_32khz``: a tiny transformers EncodecModel (32 kHz, hop 640, 4 x 512 codebooks) — on
  the real hub this repo is a transformers model too;
* ``t5-base``: the fixtures' tiny T5 (d_model 768); ``t5-large``: a tiny T5 of width 1024;
* ``facebook/audio-magnet-small``: the 10 s fixture re-targeted the way the released Audio-MAGNeT differs
  (t5-large text projection, 16 kHz): its xp.cfg names t5-large and sample rate 16000, the text projection
  is re-drawn at width 1024, and its compression_state_dict.bin is the audiocraft-made full export of a
  16 kHz EnCodec (tests/fixtures/ac_codec_16k: 4 x 512 codebooks at 50 Hz);
* ``facebook/musicgen-small``: tests/fixtures/ac_musicgen/musicgen_tiny when present.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAGNET_10S = FIXTURES / "ac_ref" / "magnet_tiny"
MAGNET_30S = FIXTURES / "ac_ref_30s" / "magnet_tiny"
MUSICGEN = FIXTURES / "ac_musicgen" / "musicgen_tiny"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"
CODEC_16K = FIXTURES / "ac_codec_16k" / "compression_state_dict.bin"
T5_PROJ = "condition_provider.conditioners.description.output_proj"


def repo_dir(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path], commit: str | None = None) -> Path:
    """Put ``files`` (name -> bytes or a file to copy) into the cache as one revision of ``repo_id`` and
    point refs/main at it. Returns the snapshot folder."""
    contents = {name: (data if isinstance(data, bytes) else Path(data).read_bytes()) for name, data in files.items()}
    if commit is None:
        h = hashlib.sha1()
        for name in sorted(contents):
            h.update(name.encode() + hashlib.sha256(contents[name]).digest())
        commit = h.hexdigest()
    repo = repo_dir(cache, repo_id)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in Path(folder).iterdir() if p.is_file()}


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def tiny_encodec_32k(out: Path, seed: int = 7) -> Path:
    """A transformers EncodecModel with MAGNeT's 32 kHz layout, narrow, 4 x 512 codebooks (the fixtures'
    card), codebooks filled (random init leaves them empty)."""
    from transformers import EncodecConfig, EncodecModel
    cfg = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], num_filters=2, hidden_size=8,
                        codebook_size=512, codebook_dim=8, target_bandwidths=[1.8], use_causal_conv=False,
                        normalize=False, use_conv_shortcut=False, pad_mode="constant", num_lstm_layers=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EncodecModel(cfg).eval()
        with torch.no_grad():
            for layer in model.quantizer.layers:
                layer.codebook.embed.normal_()
                layer.codebook.embed_avg.copy_(layer.codebook.embed)
                layer.codebook.inited.fill_(1)
    model.save_pretrained(out)
    return out


def tiny_t5(out: Path, d_model: int, seed: int = 11) -> Path:
    """The fixtures' tiny T5 tokenizer with a random 1-layer encoder of width ``d_model``."""
    from transformers import T5Config, T5EncoderModel
    cfg = T5Config.from_pretrained(T5_TINY)
    cfg.d_model = d_model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(T5_TINY / name, out / name)
    return out


def audio_magnet_state(seed: int = 5) -> bytes:
    """The 10 s fixture as an Audio-MAGNeT export: xp.cfg with t5-large and 16 kHz, text projection [dim, 1024]."""
    pkg = torch.load(MAGNET_10S / "state_dict.bin", map_location="cpu", weights_only=True)
    xp = pkg["xp.cfg"]
    for old, new in (("name: t5-base", "name: t5-large"), ("\nsample_rate: 32000", "\nsample_rate: 16000"),
                     ("//pretrained/facebook/encodec_32khz", "//pretrained/facebook/audiogen-medium")):
        assert old in xp, old
        xp = xp.replace(old, new)
    state = dict(pkg["best_state"])
    w = state[f"{T5_PROJ}.weight"]
    g = torch.Generator().manual_seed(seed)
    state[f"{T5_PROJ}.weight"] = (torch.randn(w.shape[0], 1024, generator=g) * float(w.float().std())).to(w.dtype)
    return saved({**pkg, "xp.cfg": xp, "best_state": state})


def build(root: Path, musicgen: bool = False) -> Path:
    """The fake hub cache under ``root/hub`` (built once per root). Returns the cache folder."""
    cache = Path(root) / "hub"
    done = cache / ".built"
    if done.exists() and (not musicgen or repo_dir(cache, "facebook/musicgen-small").exists()):
        return cache
    work = Path(root) / "build"
    add_repo(cache, "facebook/magnet-small-10secs", folder_files(MAGNET_10S))
    add_repo(cache, "facebook/magnet-small-30secs", folder_files(MAGNET_30S))
    add_repo(cache, "facebook/audio-magnet-small", {"state_dict.bin": audio_magnet_state(),
                                                   "compression_state_dict.bin": CODEC_16K})
    add_repo(cache, "facebook/encodec_32khz", folder_files(tiny_encodec_32k(work / "encodec_32khz")))
    add_repo(cache, "t5-base", folder_files(T5_TINY))
    add_repo(cache, "t5-large", folder_files(tiny_t5(work / "t5_large", 1024)))
    if musicgen and MUSICGEN.is_dir():
        add_repo(cache, "facebook/musicgen-small", folder_files(MUSICGEN))
    shutil.rmtree(work, ignore_errors=True)
    done.write_text("ok\n")
    return cache


def hub_env(root: Path, cache: Path) -> dict[str, str]:
    """Environment for a client process: the fake cache, offline, and a private converted-model cache."""
    return {"HF_HOME": str(Path(root) / "hf_home"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "MAGNET_FAST_CACHE": str(Path(root) / "magnet_fast_cache")}
