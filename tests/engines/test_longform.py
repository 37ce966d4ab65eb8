"""Long-form generation (``duration`` beyond the model's window): sliding windows, each continuing the
last ``window - stride`` frames, one random stream through all of them (magnet_fast/engines/longform.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import magnet_fast as mf
from magnet_fast.engines.longform import plan
from magnet_fast.errors import ParameterError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T5_TINY = FIXTURES / "ac_ref" / "t5_tiny"


def _short_window(src: Path, dst: Path, seconds: float) -> Path:
    """A converted model with a short window (config.json's segment), so windows are cheap here."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["segment_duration"] = seconds
    if cfg.get("kind") == "musicgen":
        cfg["generation"]["duration"] = seconds
    else:                                        # 16 spans per stage: fewer steps than the released schedule
        cfg["generation"]["decoding_steps"] = [3, 2, 2, 1]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def musicgen(musicgen_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    return mf.MusicGenFast.from_pretrained(_short_window(musicgen_folder, root / "mg1s", 1.0), t5=T5_TINY)


def test_plan_counts_windows():
    assert plan(50, 50, 30) == 1 and plan(51, 50, 30) == 2 and plan(80, 50, 30) == 2 and plan(81, 50, 30) == 3


def test_musicgen_windows_continue_the_tail_with_one_stream(musicgen):
    m = musicgen
    texts = ["calm piano", None]
    total = round(2.7 * 50)
    out = m.generate_tokens(texts, seed=5, duration=2.7, extend_stride=0.6)
    assert out.shape == (2, 4, total)
    window, stride = 50, 30
    ctx = window - stride
    g = torch.Generator().manual_seed(5)
    parts, prev = [], m.generate_tokens(texts, generator=g, duration=1.0)
    parts.append(prev)
    for _ in range(plan(total, window, stride) - 1):
        nxt = m.generate_tokens(texts, generator=g, duration=1.0, prompt=prev[..., -ctx:])
        assert torch.equal(nxt[..., :ctx], prev[..., -ctx:])            # the prompt region is the tail
        parts.append(nxt[..., ctx:])
        prev = nxt
    assert torch.equal(out, torch.cat(parts, -1)[..., :total])
    # window 1 is exactly a plain generation with the same seed
    assert torch.equal(out[..., :window], m.generate_tokens(texts, seed=5, duration=1.0))


def test_musicgen_duration_within_the_window_is_unchanged(musicgen):
    a = musicgen.generate_tokens(["x"], seed=2, duration=0.7)
    assert a.shape[-1] == 35
    assert torch.equal(a, musicgen.generate_tokens(["x"], seed=2, duration=0.7, extend_stride=0.5))


@pytest.mark.parametrize("kwargs, match", [
    ({"duration": 3.0, "extend_stride": 1.0}, r"extend_stride must be in \(0, 1\)"),
    ({"duration": 3.0, "extend_stride": 0.0}, r"extend_stride must be in"),
    ({"duration": 3.0, "extend_stride": float("nan")}, "extend_stride must be a finite"),
    ({"duration": 4000.0}, "duration must be <= 3600"),
])
def test_long_form_bad_input(musicgen, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        musicgen.generate_tokens(["x"], **kwargs)


def test_progress_bar_spans_all_windows(musicgen, capsys):
    musicgen.generate_tokens(["x"], seed=1, duration=2.0, extend_stride=0.5, progress=True)
    err = capsys.readouterr().err
    # window 1: 50 + 3 steps; 2 more windows of 25 new frames each: 28 steps each (prefill + 27)
    assert "109/109" in err.replace(" ", "")


def _peak_rss_mb(folder: Path, engine: str, durations: list[float], extra: dict) -> list[float]:
    code = (
        "import json, resource, sys, warnings\n"
        "import torch\n"
        "import magnet_fast as mf\n"
        "warnings.simplefilter('ignore')\n"
        "torch.set_num_threads(1)\n"
        f"m = mf.{engine}.from_pretrained({str(folder)!r}, t5={str(T5_TINY)!r})\n"
        "peaks = []\n"
        f"for d in {durations!r}:\n"
        f"    m.generate_tokens(['calm piano', 'edm'], seed=1, duration=d, **{extra!r})\n"
        "    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        "print(json.dumps(peaks))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_musicgen_memory_flat_in_the_number_of_windows(musicgen, tmp_path):
    """Peak RSS after a 2-window and after a 6-window run: the later windows reuse the same shapes, so
    the peak does not grow with the number of windows."""
    two, six = _peak_rss_mb(musicgen.path, "MusicGenFast", [1.6, 4.0], {"extend_stride": 0.6})
    assert six - two < 8, (two, six)


def test_musicgen_windows_release_their_buffers(musicgen, monkeypatch):
    """Each window's decoder (KV cache, pattern, noise buffers) is gone before the next is built: at most one
    is alive at any time, so memory cannot grow with the number of windows."""
    import weakref

    from magnet_fast.decoding import ar
    live, most = weakref.WeakSet(), []
    init = ar.ARDecoder.__init__

    def counting(self, *a, **k):
        most.append(len(live))
        init(self, *a, **k)
        live.add(self)
    monkeypatch.setattr(ar.ARDecoder, "__init__", counting)
    musicgen.generate_tokens(["x"], seed=1, duration=3.0, extend_stride=0.5)
    assert len(most) == plan(150, 50, 25) == 5 and max(most) == 0


# ------------------------------------------------------------------------------------------ MAGNeT
@pytest.fixture(scope="module")
def magnet(tmp_path_factory):
    """The MAGNeT parity fixture (10 s window) with a 1 s window: 50 frames, 48 with nonoverlap spans."""
    root = tmp_path_factory.mktemp("long-magnet")
    mf.convert(FIXTURES / "ac_ref" / "magnet_tiny", root / "m")
    return mf.MagnetFast.from_pretrained(_short_window(root / "m", root / "m1s", 1.0), t5=T5_TINY)


FEW = {"decoding_steps": [3, 2, 2, 1]}


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_magnet_windows_continue_the_tail_with_one_stream(magnet, arrangement):
    m = magnet
    kw = dict(FEW, span_arrangement=arrangement)
    window = 48 if arrangement == "nonoverlap" else 50
    total, stride = round(2.3 * 50), 25
    out = m.generate_tokens(["calm piano", None], seed=9, duration=2.3, extend_stride=0.5, **kw)
    assert out.shape == (2, 4, total)
    ctx = window - stride
    g = torch.Generator().manual_seed(9)
    prev = m.generate_tokens(["calm piano", None], generator=g, **kw)
    assert prev.shape[-1] == window
    parts = [prev]
    for _ in range(plan(total, window, stride) - 1):
        nxt = m.generate_tokens(["calm piano", None], generator=g, prompt=prev[..., -ctx:], **kw)
        assert torch.equal(nxt[..., :ctx], prev[..., -ctx:])
        parts.append(nxt[..., ctx:])
        prev = nxt
    assert torch.equal(out, torch.cat(parts, -1)[..., :total])
    assert torch.equal(out[..., :window], m.generate_tokens(["calm piano", None], seed=9, **kw))


def test_magnet_duration_within_the_window_cuts_the_plain_generation(magnet):
    plain = magnet.generate_tokens(["x"], seed=4, **FEW)
    assert torch.equal(magnet.generate_tokens(["x"], seed=4, duration=0.5, **FEW), plain[..., :25])
    assert torch.equal(magnet.generate_tokens(["x"], seed=4, duration=1.0, **FEW), plain)
    with pytest.raises(ParameterError, match="duration must be >"):
        magnet.generate_tokens(["x"], duration=-2.0)


def test_magnet_long_form_composes_with_rescoring_and_hybrid(magnet, musicgen, tmp_path):
    """Rescoring applies in every window; a hybrid prefix starts window 1 (and only window 1)."""
    kw = dict(FEW, duration=1.6, extend_stride=0.5)
    a = magnet.generate_tokens(["calm piano"], seed=3, rescorer=musicgen, rescore_weight=1.0, **kw)
    b = magnet.generate_tokens(["calm piano"], seed=3, **kw)
    assert a.shape == b.shape == (1, 4, 80) and not torch.equal(a, b)
    h = magnet.generate_tokens(["calm piano"], seed=3, hybrid=musicgen, hybrid_seconds=0.3, **kw)
    prefix = musicgen.generate_tokens(["calm piano"], seed=3, duration=0.3)
    assert torch.equal(h[..., :15], prefix)


def test_magnet_progress_bar_spans_all_windows(magnet, capsys):
    magnet.generate_tokens(["x"], seed=1, duration=2.0, extend_stride=0.5, progress=True, **FEW)
    assert f"{8 * plan(100, 48, 25)}/{8 * plan(100, 48, 25)}" in capsys.readouterr().err.replace(" ", "")


def test_magnet_windows_release_their_buffers(magnet, monkeypatch):
    import weakref

    from magnet_fast.decoding import magnet as generate
    live, most = weakref.WeakSet(), []
    init = generate.Decoder.__init__

    def counting(self, *a, **k):
        most.append(len(live))
        init(self, *a, **k)
        live.add(self)
    monkeypatch.setattr(generate.Decoder, "__init__", counting)
    magnet.generate_tokens(["x"], seed=1, duration=3.0, extend_stride=0.5, **FEW)
    assert len(most) == plan(150, 48, 25) and max(most) == 0
