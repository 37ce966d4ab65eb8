"""edit_tokens: kept frames bit for bit, the edited range regenerated, and the kept-frames path generalising
the old ones (a whole-clip range is generate_tokens, a range [P, T) is the prompt continuation)."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.errors import ParameterError
from tests.editing.conftest import FAST, random_tokens


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
def test_whole_clip_range_is_generate_tokens(demo, arrangement):
    kw = dict(FAST, span_arrangement=arrangement)
    want = demo.generate_tokens(["calm piano", None], seed=11, **kw)
    clip = random_tokens(2, want.shape[-1], seed=1)                # every frame is regenerated: input unused
    got = demo.edit_tokens(clip, 0.0, want.shape[-1] / demo.frame_rate, ["calm piano", None], seed=11, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("arrangement, prefix", [("nonoverlap", 100), ("nonoverlap", 101), ("stride1", 77)])
def test_range_to_the_end_is_the_prompt_continuation(demo, arrangement, prefix):
    kw = dict(FAST, span_arrangement=arrangement)
    t = 498 if arrangement == "nonoverlap" else 500
    clip = random_tokens(2, t, seed=2)
    want = demo.generate_tokens(["drums", "flute"], seed=5, prompt=clip[..., :prefix], **kw)
    got = demo.edit_tokens(clip, prefix / demo.frame_rate, t / demo.frame_rate, ["drums", "flute"], seed=5, **kw)
    assert torch.equal(got, want)
    assert torch.equal(got[..., :prefix], clip[..., :prefix])


def _check_kept(got, clip, kept):
    assert got.shape == clip.shape and got.dtype == torch.long
    assert torch.equal(got[kept[:, None].expand_as(got)], clip[kept[:, None].expand_as(clip)])   # bit for bit
    edited = ~kept[:, None].expand_as(got)
    assert (got[edited] != clip[edited]).float().mean() > 0.9          # the range was regenerated
    assert int(got.max()) < 2048 and int(got.min()) >= 0                # no mask id survives


@pytest.mark.parametrize("arrangement", ["nonoverlap", "stride1"])
@pytest.mark.parametrize("rescore", [False, True])
def test_kept_frames_bit_for_bit_rows_with_their_own_ranges(demo, musicgen_demo, arrangement, rescore):
    clip = random_tokens(3, 97, seed=3)                          # odd length: 'nonoverlap' decodes 99 frames
    ranges = [[(0.1, 0.5)], [(0.3, 0.7)], [(0.0, 0.2), (1.5, 1.94)]]   # rows 0/1: same size, row 2: two ranges
    extra = {"rescorer": musicgen_demo, "rescore_weight": 0.5} if rescore else {}
    got = demo.edit_tokens(clip, ranges=ranges, descriptions=["a", "b", None], seed=7,
                           span_arrangement=arrangement, **FAST, **extra)
    kept = torch.ones(3, 97, dtype=torch.bool)
    for i, row in enumerate(ranges):
        for s, e in row:
            kept[i, round(s * 50): round(e * 50)] = False
    _check_kept(got, clip, kept)


def test_long_input_edits_inside_a_window(demo):
    clip = random_tokens(1, 700, seed=4)                             # 14 s: longer than the 10 s window
    got = demo.edit_tokens(clip, ranges=[(1.0, 2.0), (12.0, 13.5)], descriptions="bass", seed=1, **FAST)
    kept = torch.ones(1, 700, dtype=torch.bool)
    kept[:, 50:100] = False
    kept[:, 600:675] = False
    _check_kept(got, clip, kept)


def test_seeded_edits_repeat_and_seeds_differ(demo):
    clip = random_tokens(1, 60, seed=5)
    a = demo.edit_tokens(clip, 0.2, 0.8, seed=3, **FAST)
    assert torch.equal(a, demo.edit_tokens(clip, 0.2, 0.8, seed=3, **FAST))
    assert not torch.equal(a, demo.edit_tokens(clip, 0.2, 0.8, seed=4, **FAST))


@pytest.mark.parametrize("call, match", [
    (lambda m, t: m.edit_tokens(t, 0.8, 0.2), "before its end"),
    (lambda m, t: m.edit_tokens(t, 0.5, 0.5), "before its end"),
    (lambda m, t: m.edit_tokens(t, 0.5, 0.54), "at least one span"),
    (lambda m, t: m.edit_tokens(t, 0.5, 3.0), "outside the audio"),
    (lambda m, t: m.edit_tokens(t, -0.1, 0.5), "outside the audio"),
    (lambda m, t: m.edit_tokens(t, 0.1), "pass start and end"),
    (lambda m, t: m.edit_tokens(t, 0.1, 0.5, ranges=[(0.1, 0.5)]), "not both"),
    (lambda m, t: m.edit_tokens(t, ranges=[(0.1, 0.5), (0.4, 0.8)]), "overlap"),
    (lambda m, t: m.edit_tokens(t.float(), 0.1, 0.5), "integer tensor"),
    (lambda m, t: m.edit_tokens(t[:, :2], 0.1, 0.5), "expected [B, 4, T]"),
    (lambda m, t: m.edit_tokens(t + 5000, 0.1, 0.5), "must be in [0, 2048)"),
    (lambda m, t: m.edit_tokens(t, 0.1, 0.5, ["a", "b", "c"]), "descriptions for 2 rows"),
    (lambda m, t: m.edit_tokens(t, 0.1, 0.5, prompt=t), "unsupported keyword"),
    (lambda m, t: m.edit_tokens(t, 0.1, 0.5, temperature=-1.0), "temperature"),
])
def test_bad_inputs_raise_parameter_errors(demo, call, match):
    with pytest.raises(ParameterError, match=match.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        call(demo, random_tokens(2, 60))
