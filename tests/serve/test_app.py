"""``magnet_fast.serve.create_app`` driven in-process (httpx over ASGI): byte-identity with the CLI, batching
and padding, every error code, metrics, the page's files, and the ``serve`` command's own refusals."""
from __future__ import annotations

import io
import re
import socket
import sys
import wave

import pytest

from tests.serve.helpers import (
    DEMO,
    MG_DEMO,
    MIXED,
    STEPS,
    call,
    cli_wav,
    make_app,
    metric,
    need_serve_extra,
    run_cli,
    running,
)

need_serve_extra()

from magnet_fast.errors import ParameterError  # noqa: E402
from magnet_fast.serve import create_app  # noqa: E402
from magnet_fast.serve.scheduler import bucket_for, make_buckets  # noqa: E402


def post(app, *bodies):
    return call(app, *[("POST", "/v1/generate", {"json": b}) for b in bodies])


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


# ----------------------------------------------------------------------------------------- identity
def test_lone_request_matches_cli_wav_and_tokens(engines, tmp_path):
    app = make_app(engines)
    magnet = {"text": "lo-fi beat with piano", "seed": 5, "decoding_steps": STEPS, "duration": 1.0}
    musicgen = {"model": "musicgen", "text": "folk guitar", "seed": 5, "duration": 0.5}
    with running(app):
        r_magnet, r_musicgen, r_tokens = post(app, magnet, musicgen, {**magnet, "format": "tokens"})
    for r, body in ((r_magnet, magnet), (r_musicgen, musicgen)):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        assert r.headers["x-seed"] == "5" and r.headers["x-seed-drawn"] == "0"
        assert r.content == cli_wav(body, tmp_path / "cli")
    assert wav_info(r_magnet.content) == (1, 2, 32000, 32000)
    code, err = run_cli("generate", magnet["text"], "--seed", "5", "--model", str(DEMO), "--steps", "2,1,1,1",
                        "--duration", "1", "--tokens-only", "--quiet", "--out", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    from safetensors.torch import load_file
    expected = load_file(str(tmp_path / "t.safetensors"))["tokens"][0]
    assert r_tokens.status_code == 200
    got = r_tokens.json()
    assert got["shape"] == list(expected.shape) == [4, 50] and got["seed"] == 5
    assert got["tokens"] == expected.tolist()


def test_mixed_concurrent_requests_batch_and_match_the_cli(engines, cli_refs):
    """8 concurrent requests in three compatible groups: each group runs as one batch (5 rows padded to the
    bucket of 8, 2 rows, 1 MusicGen row), and every response is the CLI's bytes for that request alone."""
    app = make_app(engines, max_batch=8, batch_window_ms=3000, buckets=(1, 2, 4, 8))
    with running(app):
        responses = post(app, *MIXED)
        text = call(app, ("GET", "/metrics", {}))[0].text
    for r, ref, body in zip(responses, cli_refs, MIXED, strict=True):
        assert r.status_code == 200, r.text
        assert r.content == ref, f"differs from the CLI: {body}"
    assert [int(r.headers["x-batch-size"]) for r in responses] == [5, 5, 5, 5, 5, 2, 2, 1]
    assert metric(text, "magnet_fast_padded_rows_total", model="magnet") == 3
    assert metric(text, "magnet_fast_batches_total", model="magnet") == 2
    assert metric(text, "magnet_fast_batch_size_sum", model="magnet") == 7
    assert len({r.content for r in responses}) == 8          # distinct seeds/texts: no row copied another


def test_drawn_seed_is_returned_and_reproduces(engines):
    app = make_app(engines)
    body = {"text": "calm strings", "decoding_steps": STEPS, "duration": 0.5}
    with running(app):
        first = post(app, body)[0]
        assert first.status_code == 200 and first.headers["x-seed-drawn"] == "1"
        again = post(app, {**body, "seed": int(first.headers["x-seed"])})[0]
    assert again.content == first.content


def test_buckets():
    assert make_buckets(8, "pow2") == (1, 2, 4, 8)
    assert make_buckets(6, "pow2") == (1, 2, 4, 6)
    assert make_buckets(8, None) == ()
    assert make_buckets(8, [3, 16]) == (3, 8)
    assert [bucket_for(n, (1, 2, 4, 8)) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert bucket_for(5, ()) == 5
    with pytest.raises(ParameterError):
        make_buckets(8, [0])


# ----------------------------------------------------------------------------------------- errors
ENGINE_CHECKED = [            # (model, parameters): refused by generate_tokens itself with this message
    ("magnet", {"temperature": -1}),
    ("magnet", {"decoding_steps": [1, 2]}),
    ("magnet", {"decoding_steps": [2.0, 1, 1, 1]}),
    ("magnet", {"top_k": 5000}),
    ("magnet", {"span_arrangement": "zigzag"}),
    ("magnet", {"duration": 0}),
    ("magnet", {"duration": 20, "extend_stride": 12}),
    ("magnet", {"anneal_temp": "yes"}),
    ("musicgen", {"cfg_coef": "strong"}),
    ("musicgen", {"top_p": 2}),
    ("musicgen", {"duration": -1}),
]


@pytest.mark.parametrize("model,params", ENGINE_CHECKED, ids=[f"{m}-{sorted(p)[0]}" for m, p in ENGINE_CHECKED])
def test_422_carries_the_engines_message(engines, model, params):
    with pytest.raises(ParameterError) as raised:
        engines[model].generate_tokens(["a"], seed=1, **params)
    app = make_app(engines, max_duration=60)
    with running(app):
        r = post(app, {"model": model, "text": "a", "seed": 1, **params})[0]
    assert r.status_code == 422
    assert r.json() == {"error": str(raised.value), "type": "ParameterError"}
    assert "\n" not in r.json()["error"]


@pytest.mark.parametrize("payload,match", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"seed": 1}', 'missing "text"'),
    (b'{"text": 3}', '"text" must be a string or null'),
    (b'{"text": "  "}', 'empty "text"'),
    (b'{"text": "a", "format": "mp3"}', '"format" must be one of'),
    (b'{"text": "a", "seed": -1}', "seed must be an integer"),
    (b'{"text": "a", "seed": 1.5}', "seed must be an integer"),
    (b'{"text": "a", "seed": [1, 2]}', "seed must be an integer"),
    (b'{"text": "a", "model": "nope"}', "unknown model 'nope'"),
    (b'{"text": "a", "steps": [1]}', "unknown parameter(s) 'steps'"),
    (b'{"text": "a", "batch_invariant": false}', "cannot be set over HTTP"),
    (b'{"text": "a", "duration": 11}', "over this server's limit of 10 s"),
    (b'{"text": "a", "temperature": NaN}', "temperature must be a finite number"),
])
def test_422_for_bad_requests(engines, payload, match):
    app = make_app(engines)
    with running(app):
        r = call(app, ("POST", "/v1/generate", {"content": payload}))[0]
    assert r.status_code == 422, r.text
    assert match in r.json()["error"] and "\n" not in r.json()["error"]


def test_413_body_too_large(engines):
    app = make_app(engines, max_body=1000)
    big = b'{"text": "' + b"a" * 2000 + b'"}'

    async def chunks():
        for i in range(0, len(big), 100):
            yield big[i:i + 100]
    with running(app):
        declared, streamed, small = call(app, ("POST", "/v1/generate", {"content": big}),
                                         ("POST", "/v1/generate", {"content": chunks()}),
                                         ("POST", "/v1/generate", {"json": {"text": "x" * 900, "bogus": 1}}))
    assert declared.status_code == 413 and "1000-byte limit" in declared.json()["error"]
    assert streamed.status_code == 413                     # no Content-Length: counted while reading
    assert small.status_code == 422 and "bogus" in small.json()["error"]     # under the limit: read, checked


def test_429_when_the_queue_is_full(engines):
    app = make_app(engines, max_batch=1, batch_window_ms=0, max_queue=1)
    body = {"text": "a", "seed": 1, "decoding_steps": STEPS, "duration": 0.5}
    with running(app):
        responses = post(app, *[{**body, "seed": i} for i in range(5)])
        text = call(app, ("GET", "/metrics", {}))[0].text
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue" in r.json()["error"]
    assert metric(text, "magnet_fast_requests_total", model="magnet",
                  status="429") == codes.count(429)


def test_504_and_the_waiting_request_is_dropped(engines):
    """A 0.2 s timeout against 20 decoding steps (about 0.6 s on an idle core): the running request answers
    504 (its batch runs on), the queued one is dropped before it starts (only one batch ever runs)."""
    app = make_app(engines, max_batch=1, batch_window_ms=0, timeout=0.2)
    with running(app):
        slow = {"text": "a", "seed": 1, "duration": 0.5, "decoding_steps": [8, 4, 4, 4]}
        first, second = post(app, slow, {**slow, "seed": 2})
        state = app.state.serve
    assert first.status_code == second.status_code == 504
    assert "timed out after 0.2 s" in first.json()["error"]
    worker = state.workers["magnet"]
    assert worker.batches == 1
    text = state.metrics.render()[0].decode()
    assert (metric(text, "magnet_fast_dropped_total", model="magnet", reason="cancelled")
            + metric(text, "magnet_fast_dropped_total", model="magnet", reason="timeout")) == 1


def test_500_fails_only_the_failing_batch(engines):
    """An overflowing CFG coefficient (a real NumericsError from sampling) fails its batch; a concurrent
    batch with other parameters succeeds."""
    app = make_app(engines, max_batch=4, batch_window_ms=1000)
    good = {"text": "a", "decoding_steps": STEPS, "duration": 0.5}
    bad = {**good, "max_cfg_coef": 1e38, "min_cfg_coef": 1e38}
    with running(app):
        responses = post(app, {**bad, "seed": 1}, {**good, "seed": 2}, {**bad, "seed": 3}, {**good, "seed": 4})
        health = call(app, ("GET", "/healthz", {}))[0]
    assert [r.status_code for r in responses] == [500, 200, 500, 200]
    assert responses[0].json()["type"] == "NumericsError"
    assert "non-finite" in responses[0].json()["error"]
    assert health.status_code == 200


def test_503_after_shutdown(engines):
    app = make_app(engines)
    with running(app):
        pass
    r, health = call(app, ("POST", "/v1/generate", {"json": {"text": "a"}}), ("GET", "/healthz", {}))
    assert r.status_code == 503 and "shutting down" in r.json()["error"]
    assert health.status_code == 503 and health.json()["status"] == "draining"


# ----------------------------------------------------------------------------------------- the rest
def test_models_health_metrics_page_and_docs(engines):
    app = make_app(engines)
    with running(app):
        before = call(app, ("GET", "/metrics", {}))[0].text
        ok = post(app, {"text": "a", "seed": 1, "decoding_steps": STEPS, "duration": 1.0})[0]
        models, health, metrics, page, js, css, docs, spec = call(
            app, ("GET", "/v1/models", {}), ("GET", "/healthz", {}), ("GET", "/metrics", {}), ("GET", "/", {}),
            ("GET", "/static/app.js", {}), ("GET", "/static/style.css", {}), ("GET", "/docs", {}),
            ("GET", "/openapi.json", {}))
    assert ok.status_code == 200
    after = metrics.text
    listed = {m["name"]: m for m in models.json()["models"]}
    assert set(listed) == {"magnet", "musicgen"}
    assert listed["magnet"]["kind"] == "magnet" and listed["musicgen"]["kind"] == "musicgen"
    assert listed["magnet"]["default"] and "decoding_steps" in listed["magnet"]["parameters"]
    assert "cfg_coef" in listed["musicgen"]["parameters"] and listed["musicgen"]["max_duration_s"] == 30.0
    assert health.json()["status"] == "ok"
    for name, labels, delta in (("magnet_fast_requests_total", {"status": "200"}, 1),
                                ("magnet_fast_audio_seconds_total", {}, 1.0),
                                ("magnet_fast_batches_total", {}, 1),
                                ("magnet_fast_request_latency_seconds_count", {}, 1),
                                ("magnet_fast_queue_wait_seconds_count", {}, 1)):
        assert metric(after, name, model="magnet", **labels) - metric(before, name, model="magnet", **labels) \
            == delta, name
    assert "magnet_fast_queue_depth" in after and after.count("# TYPE") >= 9
    assert page.status_code == 200 and 'id="generate"' in page.text and "/static/app.js" in page.text
    for asset in (page.text, js.text, css.text):               # works offline: nothing fetched from elsewhere
        assert not re.search(r"(src|href|url)\s*[=(]\s*[\"']?(https?:)?//", asset)
    assert docs.status_code == 200 and "/v1/generate" in spec.json()["paths"]


def test_create_app_checks_settings_and_folders(engines, tmp_path):
    with pytest.raises(ParameterError, match="max_batch must be an integer >= 1"):
        create_app(engines, max_batch=0)
    with pytest.raises(ParameterError, match="timeout must be > 0"):
        create_app(engines, timeout=0)
    with pytest.raises(ParameterError, match="no models"):
        create_app({})
    from magnet_fast.errors import CheckpointError
    with pytest.raises(CheckpointError):
        create_app(tmp_path / "missing")
    app = create_app([DEMO, ("other", MG_DEMO)])
    assert [n for n, _ in app.state.serve.specs] == ["magnet-tiny-demo", "other"]


# ----------------------------------------------------------------------------------------- the command
def _one_line(code, err, match):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("magnet-fast: error:") and match in lines[0], err


def test_serve_without_the_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)          # import fastapi -> ImportError
    _one_line(*run_cli("serve"), 'pip install -e ".[serve]"')


@pytest.mark.parametrize("args,match", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--max-queue", "0"], "--max-queue must be >= 1"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--batch-window-ms", "nan"], "--batch-window-ms must be a finite number"),
    (["--replicas", "2"], "need --ray"),
    (["--model", "a=x", "--model", "a=y"], "given twice"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--port", "70000"], "--port must be in"),
])
def test_serve_refuses_bad_flags_in_one_line(args, match):
    _one_line(*run_cli("serve", *args), match)


def test_serve_refuses_a_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        _one_line(*run_cli("serve", "--port", str(s.getsockname()[1]), "--model", str(MG_DEMO)),
                  "pass another --port")
