"""``POST /v1/edit`` driven in-process (httpx over ASGI): byte-identity with ``magnet-fast edit`` run in-process
(``magnet_fast.cli.main``), tokens and ranges against the Python API, serialisation with generation on the
model's worker, and every refusal (422 with the engine's own message, 413, 429, 504)."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.serve.helpers import DEMO, STEPS, call, make_app, metric, need_serve_extra, run_cli, running

need_serve_extra()
pytest.importorskip("python_multipart", reason="python-multipart is not installed: pip install -e \".[serve]\"")
import httpx  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from magnet_fast.errors import ParameterError  # noqa: E402


def edit_request(audio: bytes, params) -> tuple[str, str, dict]:
    text = params if isinstance(params, str) else json.dumps(params)
    return ("POST", "/v1/edit", {"files": {"audio": ("in.wav", audio, "audio/wav")}, "data": {"params": text}})


def clip(path, seconds: float, rate: int = 32000, channels: int = 1, seed: int = 0) -> bytes:
    """A real 16-bit WAV: a chord plus a little noise (odd sizes welcome)."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 331 * t) + 0.05 * rng.standard_normal(t.shape)
    data = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    sf.write(str(path), data, rate, subtype="PCM_16")
    return path.read_bytes()


def cli_edit(tmp_path, wav_path, *flags: str) -> bytes:
    out = tmp_path / f"cli_{len(list(tmp_path.glob('cli_*.wav')))}.wav"
    code, err = run_cli("edit", str(wav_path), *flags, "--model", str(DEMO), "--quiet", "--out", str(out))
    assert code == 0, err
    return out.read_bytes()


@pytest.fixture(scope="module")
def app(engines):
    app = make_app(engines)
    with running(app):
        yield app


# ----------------------------------------------------------------------------------------- identity
def test_edit_matches_cli_bytes_while_generation_runs(app, tmp_path):
    mono = clip(tmp_path / "mono.wav", 1.37)
    stereo = clip(tmp_path / "stereo.wav", 0.91, rate=44100, channels=2, seed=1)
    a = {"start": 0.3, "end": 0.76, "text": "lo-fi beat with piano", "seed": 7, "decoding_steps": STEPS}
    b = {"model": "magnet", "start": 0.12, "end": 0.6, "text": None, "seed": 123456789, "crossfade": 0.1,
         "temperature": 2.0, "decoding_steps": STEPS}
    gen = {"model": "magnet", "text": "calm strings", "seed": 3, "decoding_steps": STEPS, "duration": 0.5}
    r_a, r_gen, r_b = call(app, edit_request(mono, a), ("POST", "/v1/generate", {"json": gen}),
                           edit_request(stereo, b))
    assert r_gen.status_code == 200, r_gen.text
    for r in (r_a, r_b):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        assert r.headers["x-batch-size"] == "1" and r.headers["x-seed-drawn"] == "0"
    assert r_a.headers["x-seed"] == "7" and r_b.headers["x-seed"] == "123456789"
    ref_a = cli_edit(tmp_path, tmp_path / "mono.wav", "--start", "0.3", "--end", "0.76", "lo-fi beat with piano",
                     "--seed", "7", "--steps", "2,1,1,1")
    ref_b = cli_edit(tmp_path, tmp_path / "stereo.wav", "--start", "0.12", "--end", "0.6", "--seed", "123456789",
                     "--crossfade", "0.1", "--temperature", "2.0", "--steps", "2,1,1,1")
    assert r_a.content == ref_a
    assert r_b.content == ref_b
    assert r_a.content != r_b.content
    info = sf.info(__import__("io").BytesIO(r_a.content))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (32000, 1, round(1.37 * 32000), "PCM_16")
    # the edit changed the range and kept the rest (up to the 16-bit rounding of the round trip)
    got, _ = sf.read(__import__("io").BytesIO(r_a.content), dtype="int16")
    orig, _ = sf.read(str(tmp_path / "mono.wav"), dtype="int16")
    fade, lo, hi = round(0.05 * 32000), 15 * 640, 38 * 640            # frames 15..38 of 640 samples each
    assert np.array_equal(got[: lo - fade], orig[: lo - fade])
    assert np.array_equal(got[hi + fade:], orig[hi + fade:])
    assert not np.array_equal(got[lo - fade: lo], orig[lo - fade: lo])      # the crossfades
    assert not np.array_equal(got[hi: hi + fade], orig[hi: hi + fade])
    assert np.abs(got[lo:hi].astype(float) - orig[lo:hi]).mean() > 100


def test_drawn_seed_is_returned_and_reproduces(app, tmp_path):
    wav = clip(tmp_path / "in.wav", 0.8)
    params = {"start": 0.2, "end": 0.5, "text": "jazz", "decoding_steps": STEPS}
    (r,) = call(app, edit_request(wav, params))
    assert r.status_code == 200, r.text
    assert r.headers["x-seed-drawn"] == "1"
    (again,) = call(app, edit_request(wav, {**params, "seed": int(r.headers["x-seed"])}))
    assert again.content == r.content


def test_tokens_and_ranges_match_the_api(app, engines, tmp_path):
    engine = engines["magnet"]
    wav_bytes = clip(tmp_path / "in.wav", 1.1, rate=22050)
    params = {"ranges": [[0.1, 0.3], [0.6, 0.9]], "text": "folk", "seed": 9, "decoding_steps": STEPS}
    r_tok, r_wav = call(app, edit_request(wav_bytes, {**params, "format": "tokens"}), edit_request(wav_bytes, params))
    assert r_tok.status_code == 200 and r_wav.status_code == 200, (r_tok.text, r_wav.text)
    got = r_tok.json()
    from magnet_fast.engines.editing import read_input
    audio, rate = read_input(engine, str(tmp_path / "in.wav"), None)
    source = engine.encode(audio, rate)
    expected = engine.edit_tokens(source, None, None, "folk", ranges=[(0.1, 0.3), (0.6, 0.9)], seed=9,
                                  decoding_steps=tuple(STEPS))
    assert got["seed"] == 9 and got["shape"] == list(expected.shape[1:]) == [4, 55]
    tokens = torch.tensor(got["tokens"])
    assert torch.equal(tokens, expected[0])
    kept = torch.ones(55, dtype=torch.bool)
    kept[5:15] = kept[30:45] = False
    assert torch.equal(tokens[:, kept], source[0][:, kept])         # outside the ranges: the input's tokens
    assert not torch.equal(tokens[:, ~kept], source[0][:, ~kept])
    api = engine.edit(str(tmp_path / "in.wav"), ranges=[(0.1, 0.3), (0.6, 0.9)], descriptions="folk", seed=9,
                      decoding_steps=tuple(STEPS))
    from magnet_fast.io.audio import wav_bytes as to_wav
    assert r_wav.content == to_wav(api[0], engine.sample_rate)[0]


# ----------------------------------------------------------------------------------------- refusals
def engine_message(engine, wav_path, **kw) -> str:
    with pytest.raises(ParameterError) as e:
        engine.edit(str(wav_path), **kw)
    return str(e.value)


def test_bad_requests_are_422_with_the_engine_message(app, engines, tmp_path):
    wav = clip(tmp_path / "in.wav", 1.0)
    engine = engines["magnet"]
    ok = {"start": 0.2, "end": 0.5, "seed": 1, "decoding_steps": STEPS}
    cases = [
        ({**ok, "start": 0.6}, engine_message(engine, tmp_path / "in.wav", start=0.6, end=0.5)),
        ({**ok, "end": 1.5}, engine_message(engine, tmp_path / "in.wav", start=0.2, end=1.5)),
        ({**ok, "start": 0.2, "end": 0.23}, engine_message(engine, tmp_path / "in.wav", start=0.2, end=0.23)),
        ({"ranges": [[0.1, 0.4], [0.3, 0.6]], "seed": 1},
         engine_message(engine, tmp_path / "in.wav", ranges=[(0.1, 0.4), (0.3, 0.6)])),
        ({**ok, "ranges": [[0.1, 0.4]]}, engine_message(engine, tmp_path / "in.wav", start=0.2, end=0.5,
                                                        ranges=[(0.1, 0.4)])),
        ({"seed": 1}, engine_message(engine, tmp_path / "in.wav")),
        ({**ok, "crossfade": -1}, engine_message(engine, tmp_path / "in.wav", start=0.2, end=0.5, crossfade=-1)),
        ({**ok, "top_p": 2.0}, engine_message(engine, tmp_path / "in.wav", start=0.2, end=0.5, top_p=2.0)),
        ({**ok, "decoding_steps": [0, 1, 1, 1]},
         engine_message(engine, tmp_path / "in.wav", start=0.2, end=0.5, decoding_steps=(0, 1, 1, 1))),
    ]
    responses = call(app, *[edit_request(wav, p) for p, _ in cases])
    for r, (p, message) in zip(responses, cases, strict=True):
        assert r.status_code == 422, (p, r.text)
        assert r.json() == {"error": message, "type": "ParameterError"}, p
    # MusicGen: no masked decoding
    (r,) = call(app, edit_request(wav, {**ok, "model": "musicgen"}))
    assert r.status_code == 422 and "no masked decoding" in r.json()["error"]
    assert "\n" not in r.json()["error"]
    others = [
        edit_request(wav, {**ok, "model": "nope"}),
        edit_request(wav, {**ok, "text": "  "}),
        edit_request(wav, {**ok, "seed": -1}),
        edit_request(wav, {**ok, "format": "mp3"}),
        edit_request(wav, {**ok, "duration": 3.0}),
        edit_request(wav, "{not json"),
        edit_request(wav, "[1, 2]"),
        edit_request(b"RIFF not a wav at all", ok),
        ("POST", "/v1/edit", {"data": {"params": json.dumps(ok)}}),
        ("POST", "/v1/edit", {"files": {"audio": ("in.wav", wav, "audio/wav")}}),
        ("POST", "/v1/edit", {"json": ok}),
        ("POST", "/v1/edit", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; "
                                                                                      "boundary=x"}}),
    ]
    for r, req in zip(call(app, *others), others, strict=True):
        assert r.status_code == 422, (req, r.text)
        body = r.json()
        assert body["type"] == "ParameterError" and body["error"] and "\n" not in body["error"], body
    assert "unknown parameter(s) 'duration'" in call(app, others[4])[0].json()["error"]
    text, spec = (r.text for r in call(app, ("GET", "/metrics", {}), ("GET", "/openapi.json", {})))
    assert "multipart/form-data" in json.loads(spec)["paths"]["/v1/edit"]["post"]["requestBody"]["content"]
    assert metric(text, "magnet_fast_requests_total", model="musicgen", status="422") >= 1
    assert metric(text, "magnet_fast_requests_total", model="magnet", status="200") >= 1


def test_too_large_queue_full_and_timeout(engines, tmp_path):
    wav = clip(tmp_path / "in.wav", 0.8)
    ok = {"start": 0.2, "end": 0.5, "seed": 1, "decoding_steps": STEPS}
    small = make_app(engines, max_upload=len(wav) + 100)
    with running(small):
        (r,) = call(small, edit_request(wav, ok))
        assert r.status_code == 413 and r.json()["type"] == "TooLarge", r.text
    # the queue holds one waiting generation (its batch window is long): the edit finds it full
    busy = make_app(engines, max_queue=1, batch_window_ms=1500)
    with running(busy):
        async def go():
            transport = httpx.ASGITransport(app=busy)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=600) as c:
                gen = asyncio.ensure_future(c.post("/v1/generate", json={"text": "x", "seed": 1, "duration": 0.3,
                                                                         "decoding_steps": STEPS}))
                while busy.state.serve.workers["magnet"].depth() == 0:
                    await asyncio.sleep(0.01)
                method, path, kw = edit_request(wav, ok)
                edit = await c.request(method, path, **kw)
                return edit, await gen
        edit, gen = asyncio.run(go())
        assert edit.status_code == 429 and "retry-after" in edit.headers, edit.text
        assert gen.status_code == 200
    slow = make_app(engines, timeout=0.01)
    with running(slow):
        (r,) = call(slow, edit_request(wav, ok))
        assert r.status_code == 504 and r.json()["type"] == "Timeout", r.text


def test_real_server_edit_matches_cli(server, tmp_path):
    """Through uvicorn on 127.0.0.1 (the session's ``magnet-fast serve`` process, batch window 1 s: an edit
    does not wait it out)."""
    clip(tmp_path / "in.wav", 0.9, rate=48000, channels=2, seed=4)
    with open(tmp_path / "in.wav", "rb") as f:
        r = httpx.post(server.url + "/v1/edit", files={"audio": ("in.wav", f, "audio/wav")}, timeout=120,
                       data={"params": json.dumps({"start": 0.24, "end": 0.6, "text": "bright synth", "seed": 21,
                                                   "decoding_steps": STEPS})})
    assert r.status_code == 200, r.text
    assert float(r.headers["x-queue-ms"]) < 900
    assert r.content == cli_edit(tmp_path, tmp_path / "in.wav", "bright synth", "--start", "0.24", "--end", "0.6",
                                 "--seed", "21", "--steps", "2,1,1,1")
    r = httpx.post(server.url + "/v1/edit", files={"audio": ("in.wav", b"x" * 10, "audio/wav")},
                   data={"params": json.dumps({"model": "musicgen", "start": 0.1, "end": 0.5})}, timeout=60)
    assert r.status_code == 422 and "no masked decoding" in r.json()["error"]
