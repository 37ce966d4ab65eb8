#!/usr/bin/env python3
"""Build the bundled demo model ``magnet_fast/demo/magnet-tiny-demo/`` (a few MB, deterministic).

UNTRAINED RANDOM WEIGHTS: the audio it produces is noise. It exists so that the whole pipeline
(T5 text encoder -> MAGNeT decoding -> EnCodec decoding -> WAV) runs on a fresh machine with no
download. Real music needs a released checkpoint: ``huggingface-cli download
facebook/magnet-small-10secs --local-dir ckpt && magnet-fast convert ckpt magnet-small && magnet-fast
generate --model magnet-small "..."``.

Layout (the converted-model format): config.json + model.safetensors (the LM, fp16 like the released
files), t5/ (a real transformers T5Tokenizer over a small word vocabulary + a 1-layer T5 encoder) and
codec/ (a transformers EncodecModel with MAGNeT's 32 kHz layout, narrow widths, 4 x 2048 codebooks).
It ships inside the package as package data (pyproject.toml), found at run time as
``magnet_fast.demo.DEMO_MODEL``.

    python weights/make_default.py [--out magnet_fast/demo/magnet-tiny-demo]
    python weights/make_default.py --musicgen [--out magnet_fast/demo/musicgen-tiny-demo]

``--musicgen`` builds the MusicGen demo beside it (same tiny geometry, causal, delay pattern): the CLI's
``--hybrid`` / ``--rescore`` and ``--model`` MusicGen paths run on it. It has its own copy of the demo T5
(256 KB) and uses the MAGNeT demo's codec folder (config.json's codec path ``../magnet-tiny-demo/codec``).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

DEMO_OUT = Path(__file__).resolve().parents[1] / "magnet_fast" / "demo" / "magnet-tiny-demo"
MUSICGEN_OUT = DEMO_OUT.parent / "musicgen-tiny-demo"

WORDS = ("a an and the with of for in on to by at beat beats bass drum drums guitar piano synth synths "
         "electronic edm disco funky groove rock jazz calm happy sad energetic melodic catchy track music "
         "song loop slow fast lo fi lofi hip hop ambient pad strings violin orchestra cinematic epic chill "
         "dance house techno trance pop folk acoustic vocal choir bright dark warm soft loud 80s 90s").split()
NOTICE = ("untrained demo weights (random): the audio is noise. For music, convert a released checkpoint: "
          "magnet-fast convert <facebook/magnet-small-10secs download> OUT; magnet-fast generate --model OUT")


def make_t5(folder: Path, d_model: int, seed: int) -> None:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -4.0) for w in WORDS]
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789-'":
        vocab += [("\u2581" + ch, -9.0), (ch, -10.0)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    cfg = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=16, d_ff=4 * d_model, num_layers=1,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                   dropout_rate=0.0, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5EncoderModel(cfg).eval()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)


def make_codec(folder: Path, seed: int) -> dict:
    from transformers import EncodecConfig, EncodecModel
    cfg = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], num_filters=4, hidden_size=16,
                        codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False, normalize=False,
                        use_conv_shortcut=False, pad_mode="constant")
    torch.manual_seed(seed)
    model = EncodecModel(cfg).eval()
    with torch.no_grad():
        for layer in model.quantizer.layers:              # codebooks start empty (k-means init): fill them
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.inited.fill_(1)
    model.save_pretrained(folder, safe_serialization=True)
    return {"kind": "full", "path": folder.name, "sample_rate": 32000, "frame_rate": 50, "n_q": 4,
            "card": 2048, "pad_mode": "constant", "ratios": [8, 5, 4, 4]}


def make_lm(cfg, seed: int) -> dict:
    from magnet_fast.nn.model import MagnetLM
    torch.manual_seed(seed)
    lm = MagnetLM(cfg)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.05 if "heads" not in name else 0.2)
    return {k: v.to(torch.float16).contiguous() for k, v in lm.state_dict().items()}


MUSICGEN_NOTICE = ("untrained demo weights (random): the audio is noise. For music, convert a released "
                   "checkpoint: magnet-fast convert <facebook/musicgen-small download> OUT")


def make_musicgen(out: Path, seed: int) -> None:
    """The MusicGen demo: the MAGNeT demo's geometry and T5, causal LM weights of its own."""
    from magnet_fast.config import MagnetConfig
    from magnet_fast.params import ARParams
    codec = dict(MagnetConfig.load(DEMO_OUT).codec, path="../magnet-tiny-demo/codec")
    cfg = MagnetConfig(dim=64, num_heads=4, num_layers=2, card=2048, t5_name="t5", t5_dim=64, codec=codec,
                       notice=MUSICGEN_NOTICE, kind="musicgen", delays=(0, 1, 2, 3), lm_cfg_coef=3.0,
                       span_len=1, subcodes_context=-1, segment_duration=30.0, generation=ARParams(),
                       source={"file": "weights/make_default.py --musicgen", "seed": seed})
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        shutil.copytree(DEMO_OUT / "t5", tmp / "t5")
        save_file(make_lm(cfg, seed), str(tmp / "model.safetensors"), metadata={"format": "magnet_fast/1"})
        dataclasses.replace(cfg, weights_dtype="float16").save(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--musicgen", action="store_true", help="build the MusicGen demo instead")
    args = ap.parse_args()
    from magnet_fast.config import MagnetConfig
    if args.musicgen:
        out = Path(args.out or MUSICGEN_OUT)
        make_musicgen(out, args.seed + 10)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"wrote {out} ({size / 1e6:.2f} MB)")
        return
    out = Path(args.out or DEMO_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        (tmp / "t5").mkdir()
        (tmp / "codec").mkdir()
        make_t5(tmp / "t5", d_model=64, seed=args.seed + 1)
        codec = make_codec(tmp / "codec", seed=args.seed + 2)
        cfg = MagnetConfig(dim=64, num_heads=4, num_layers=2, card=2048, t5_name="t5", t5_dim=64,
                           codec=codec, notice=NOTICE,
                           source={"file": "weights/make_default.py", "seed": args.seed})
        save_file(make_lm(cfg, args.seed), str(tmp / "model.safetensors"), metadata={"format": "magnet_fast/1"})
        cfg = dataclasses.replace(cfg, weights_dtype="float16")
        cfg.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
