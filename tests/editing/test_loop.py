"""loop=True (LoopGen's circular padding): the property guaranteed is that, at every decoding step and on
every codebook, the padding frames hold exactly the tile's tokens wrapped around (left padding = the tile's
end, right padding = its start), so the tile's last frames are decoded next to its first ones. loop=False is
the unchanged generation."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.engines.editing import loop_geometry, loop_tokens, seam_perplexity, wrap_source
from magnet_fast.errors import ParameterError
from tests.editing.conftest import FAST


def test_wrap_source_maps_padding_onto_the_tile():
    src = wrap_source(tile=5, pad=3, length=13)
    assert src.tolist() == [5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]
    src = wrap_source(tile=2, pad=3, length=8)                     # padding longer than the tile: wraps again
    assert src.tolist() == [4, 3, 4, 3, 4, 3, 4, 3]


@pytest.mark.parametrize("arrangement, seconds", [("nonoverlap", 2.0), ("nonoverlap", 3.02), ("stride1", 2.5)])
def test_padding_is_the_wrapped_tile_at_every_step(demo, arrangement, seconds):
    tile, pad = loop_geometry(demo.config, arrangement, seconds)
    seen = []

    def on_step(stage, index, state):
        seq = state.seq[: state.row.shape[0]]
        t = seq.shape[-1]
        src = wrap_source(tile, pad, t)
        assert torch.equal(seq, seq[..., src]), (stage, index)        # every codebook, decoded or masked
        assert torch.equal(state.row, state.row[..., src])
        seen.append((stage, index))
    out = loop_tokens(demo, ["techno", None], duration=seconds, seed=4, span_arrangement=arrangement,
                      on_step=on_step, **FAST)
    assert len(seen) == sum(FAST["decoding_steps"])
    assert out.shape == (2, 4, round(seconds * 50)) and int(out.max()) < 2048


def test_loop_is_seeded_and_the_api_delegates(demo):
    a = demo.generate_tokens(["house"], seed=3, loop=True, duration=2.0, **FAST)
    assert torch.equal(a, loop_tokens(demo, ["house"], duration=2.0, seed=3, **FAST))
    assert not torch.equal(a, demo.generate_tokens(["house"], seed=4, loop=True, duration=2.0, **FAST))


def test_loop_false_is_the_unchanged_generation(demo):
    plain = demo.generate_tokens(["calm piano"], seed=9, **FAST)
    assert torch.equal(demo.generate_tokens(["calm piano"], seed=9, loop=False, **FAST), plain)
    assert plain.shape[-1] == 498


def test_loop_audio_is_the_tile_decoded_wrapped_around(demo):
    from magnet_fast.engines.editing import loop_audio
    tokens = demo.generate_tokens(["a"], seed=1, loop=True, duration=1.0, **FAST)
    wav = loop_audio(demo, tokens)
    hop = demo.sample_rate // demo.frame_rate
    assert wav.shape == (1, 1, 50 * hop)
    twice = demo.decode(torch.cat([tokens, tokens, tokens], dim=-1))[..., 50 * hop: 100 * hop]
    assert (wav - twice).abs().max() < (wav - demo.decode(tokens)).abs().max()   # closer to a played loop


def test_seam_perplexity_mechanics(demo):
    tokens = demo.generate_tokens(["a", "b"], seed=1, loop=True, duration=2.0, **FAST)
    ppl = seam_perplexity(demo, tokens, ["a", "b"])
    assert ppl.shape == (2,) and torch.isfinite(ppl).all() and (ppl > 1).all()
    other = tokens.clone()
    other[..., :3] = (other[..., :3] + 1) % 2048                   # change the frames right after the seam
    assert not torch.equal(seam_perplexity(demo, other, ["a", "b"]), ppl)
    with pytest.raises(ParameterError, match="width"):
        seam_perplexity(demo, tokens, width=0)


@pytest.mark.parametrize("kw, match", [
    ({"duration": 9.0}, "duration must be in"),
    ({"duration": 0.02}, "duration must be in"),
    ({"duration": float("inf")}, "finite number"),
    ({"prompt": torch.zeros(1, 4, 10, dtype=torch.long)}, "does not combine with prompt"),
    ({"extend_stride": 2.0}, "does not combine with extend_stride"),
    ({"loop": "yes"}, "loop must be True or False"),
])
def test_bad_loop_inputs(demo, kw, match):
    kw = {"loop": True, **kw}
    with pytest.raises(ParameterError, match=match):
        demo.generate_tokens(["a"], **kw)
