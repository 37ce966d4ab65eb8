"""Public API behaviour: validation (one test per rule), reproducibility, prompts, null rows."""
from __future__ import annotations

import pytest
import torch

from magnet_fast.errors import ParameterError

SHORT = dict(decoding_steps=[2, 1, 1, 1])


@pytest.mark.parametrize("kwargs, match", [
    pytest.param(dict(decoding_steps=[2, 1, 1]), "4 positive integers", id="steps-length"),
    pytest.param(dict(decoding_steps=[2, 0, 1, 1]), "4 positive integers", id="steps-zero"),
    pytest.param(dict(decoding_steps="20,10"), "list of 4", id="steps-str"),
    pytest.param(dict(top_p=1.5), "top_p must be <= 1", id="top-p-high"),
    pytest.param(dict(top_p=-0.1), "top_p must be >= 0", id="top-p-neg"),
    pytest.param(dict(top_k=-1), "top_k must be >= 0", id="top-k-neg"),
    pytest.param(dict(top_k=2.5), "top_k must be a finite integer", id="top-k-float"),
    pytest.param(dict(temperature=-1.0), "temperature must be >= 0", id="temp-neg"),
    pytest.param(dict(max_cfg_coef=float("nan")), "max_cfg_coef must be a finite", id="cfg-nan"),
    pytest.param(dict(min_cfg_coef=float("inf")), "min_cfg_coef must be a finite", id="cfg-inf"),
    pytest.param(dict(span_arrangement="stride2"), "span_arrangement", id="arrangement"),
    pytest.param(dict(span_scoring="mean"), "span_scoring", id="scoring"),
    pytest.param(dict(use_sampling="yes"), "use_sampling", id="use-sampling"),
    pytest.param(dict(seed=-3), "seed", id="seed"),
])
def test_parameter_validation(model10, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        model10.generate_tokens(["calm piano"], **kwargs)


@pytest.mark.parametrize("descriptions, match", [
    pytest.param([], "empty", id="empty"),
    pytest.param("calm piano", "list of strings", id="bare-string"),
    pytest.param(["ok", 3], "str or None", id="not-str"),
])
def test_description_validation(model10, descriptions, match):
    with pytest.raises(ParameterError, match=match):
        model10.generate_tokens(descriptions)


def test_prompt_validation(model10):
    for prompt, match in [(torch.zeros(1, 4, 498, dtype=torch.long), "prompt length"),
                          (torch.zeros(2, 4, 10, dtype=torch.long), "expected \\[1, 4, P\\]"),
                          (torch.full((1, 4, 10), 512), "prompt tokens"),
                          (torch.zeros(1, 4, 10), "integer tensor")]:
        with pytest.raises(ParameterError, match=match):
            model10.generate_tokens(["x"], prompt=prompt)


def test_seed_reproduces_and_leaves_global_rng(model10):
    state = torch.get_rng_state()
    a = model10.generate_tokens(["calm piano", None], seed=11, **SHORT)
    assert torch.equal(torch.get_rng_state(), state)
    b = model10.generate_tokens(["calm piano", None], seed=11, **SHORT)
    assert torch.equal(a, b)
    assert a.shape == (2, 4, 498) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < 512                  # no mask id left anywhere


def test_prompt_is_kept_and_stride1_length(model10):
    prompt = torch.randint(0, 512, (1, 4, 25), generator=torch.Generator().manual_seed(0))
    out = model10.generate_tokens(["calm piano"], prompt=prompt, seed=1, span_arrangement="stride1", **SHORT)
    assert out.shape == (1, 4, 500)
    assert torch.equal(out[..., :25], prompt)


def test_none_and_empty_text_are_the_same_null_row(model10):
    a = model10.generate_tokens([None], seed=5, **SHORT)
    b = model10.generate_tokens([""], seed=5, **SHORT)
    assert torch.equal(a, b)
    assert (model10.condition([None]) == 0).all()


def test_progress_bar(model10, capsys):
    model10.generate_tokens(["calm piano"], seed=1, progress=True, **SHORT)
    assert "5/5" in capsys.readouterr().err


def test_callback_reports_every_decoding_step(model10):
    seen = []
    model10.generate_tokens(["x"], seed=1, decoding_steps=[3, 2, 2, 1], callback=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 8) for i in range(1, 9)]
    from magnet_fast.errors import ParameterError
    with pytest.raises(ParameterError, match="callback must be callable"):
        model10.generate_tokens(["x"], callback=3)
