"""Load test of ``magnet-fast serve`` (loopback only, fixed request counts, stops by itself).

Runs, each against a fresh server process on 127.0.0.1:
  1. baseline: the N requests one at a time (one client) against ``--max-batch 1``;
  2. concurrency without batching: C clients against ``--max-batch 1`` (what concurrency alone gives);
  3. batched: C clients against ``--max-batch B`` (dynamic batching), repeated ``--repeats`` times on one
     server, with the server's RSS after each repeat (flat = no leak);
  4. overload: ``--overload`` requests at once against ``--max-queue 16``: only 200s and 429s, no 5xx, and
     the server healthy afterwards.
Every response of runs 1-3 must be 200, and each request's bytes must equal across runs (a request's audio
does not depend on its batch mates). Results: bench/results/serve-<device>-<date>/ (results.json, .md).

    python bench/serve.py --requests 64 --clients 8 --max-batch 8 [--steps 4,2,2,2] [--duration 1]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import save_results, stamp  # noqa: E402

TEXTS = ["lo-fi beat with piano", "driving drums, warm bass and bright synth arpeggios", "calm strings",
         "jazz trio with brushed snare", None, "ambient pad with slow reverb", "folk guitar", "8-bit chiptune"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Server:
    def __init__(self, args, *flags: str):
        import httpx
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "magnet_fast.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--device", args.device, *flags]
        if args.model:
            cmd += ["--model", args.model]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("server did not come up in 300 s")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def requests_for(args) -> list[dict]:
    out = []
    for i in range(args.requests):
        body = {"text": TEXTS[i % len(TEXTS)], "seed": 1000 + i}
        if args.steps:
            body["decoding_steps"] = [int(s) for s in args.steps.split(",")]
        if args.duration:
            body["duration"] = args.duration
        out.append(body)
    return out


def run_clients(url: str, bodies: list[dict], clients: int) -> dict:
    """``clients`` threads share the request list (each takes the next); -> timings and digests."""
    import httpx
    lock = threading.Lock()
    todo = list(enumerate(bodies))
    results: dict[int, tuple] = {}

    def client():
        with httpx.Client(base_url=url, timeout=3600) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i, body = todo.pop(0)
                t0 = time.perf_counter()
                r = c.post("/v1/generate", json=body)
                results[i] = (r.status_code, time.perf_counter() - t0, hashlib.sha256(r.content).hexdigest(),
                              int(r.headers.get("x-batch-size", 0)), float(r.headers.get("x-audio-seconds", 0)))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(v[1] for v in results.values())

    def pct(p):
        return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat)) - 1))]
    return {"wall_s": wall, "requests": len(bodies), "ok": sum(v[0] == 200 for v in results.values()),
            "statuses": sorted({v[0] for v in results.values()}), "req_per_s": len(bodies) / wall,
            "audio_s": sum(v[4] for v in results.values()),
            "p50_s": pct(50), "p95_s": pct(95), "p99_s": pct(99), "mean_batch": statistics.mean(
                v[3] for v in results.values()), "digests": [results[i][2] for i in range(len(bodies))]}


def overload(url: str, body: dict, n: int) -> dict:
    import httpx

    async def go():
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as c:
            return await asyncio.gather(*(c.post("/v1/generate", json={**body, "seed": i}) for i in range(n)))
    t0 = time.perf_counter()
    responses = asyncio.run(go())
    codes: dict[int, int] = {}
    for r in responses:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    healthy = httpx.get(url + "/healthz", timeout=30).status_code == 200
    after = httpx.post(url + "/v1/generate", json={**body, "seed": 1}, timeout=3600).status_code
    return {"requests": n, "codes": codes, "wall_s": time.perf_counter() - t0, "healthy_after": healthy,
            "request_after": after}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-window-ms", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--overload", type=int, default=200)
    p.add_argument("--steps", help="decoding_steps of every request, e.g. 4,2,2,2 (default: the model's)")
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--model", help="model folder (default: the bundled demo)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", help="results folder (default bench/results/serve-<device>-<date>)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = p.parse_args(argv)
    date = datetime.date.today().isoformat()
    out = Path(args.out or ROOT / "bench" / "results" / f"serve-{args.device}-{date}")
    meta = {**stamp(args.device), "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "server_threads": os.environ.get("OMP_NUM_THREADS")}
    bodies = requests_for(args)
    rows: list[dict] = []
    md = ["# magnet-fast serve load test", "",
          f"{meta['device_name']}, torch {meta['torch']}, {meta['date']}; load average at start "
          f"{meta['loadavg_at_start']}. {args.note}", "",
          f"{args.requests} requests ({args.duration} s, steps {args.steps or 'model default'}) on "
          f"{args.model or 'the bundled demo'}.", "",
          "| run | clients | max batch | wall s | req/s | x baseline | p50 s | p95 s | p99 s | mean batch | "
          "RSS MB (peak) |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def record(name, clients, max_batch, res, rss=None):
        base = rows[0]["req_per_s"] if rows else res["req_per_s"]
        row = {"run": name, "clients": clients, "max_batch": max_batch, **{k: v for k, v in res.items()
                                                                         if k != "digests"},
               "speedup": res["req_per_s"] / base, "rss_mb": rss and rss[0], "peak_rss_mb": rss and rss[1]}
        rows.append(row)
        md.append(f"| {name} | {clients} | {max_batch} | {res['wall_s']:.1f} | {res['req_per_s']:.2f} | "
                  f"{row['speedup']:.2f}x | {res['p50_s']:.2f} | {res['p95_s']:.2f} | {res['p99_s']:.2f} | "
                  f"{res['mean_batch']:.2f} | " + (f"{rss[0]:.0f} ({rss[1]:.0f})" if rss else "") + " |")
        print(md[-1], flush=True)
        save_results(out, meta, rows, md, plots=False)

    failures = []
    server = Server(args, "--max-batch", "1", "--batch-window-ms", "0", "--max-queue", str(args.requests))
    try:
        base = run_clients(server.url, bodies, 1)
        record("one at a time", 1, 1, base, rss_mb(server.proc.pid))
        conc = run_clients(server.url, bodies, args.clients)
        record("concurrent, no batching", args.clients, 1, conc, rss_mb(server.proc.pid))
    finally:
        server.stop()
    server = Server(args, "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.batch_window_ms),
                    "--max-queue", str(args.requests))
    try:
        for i in range(args.repeats):
            res = run_clients(server.url, bodies, args.clients)
            record(f"batched #{i + 1}", args.clients, args.max_batch, res, rss_mb(server.proc.pid))
            if res["digests"] != base["digests"]:
                failures.append(f"batched run {i + 1}: responses differ from the one-at-a-time run")
    finally:
        server.stop()
    for r in rows:
        if r["ok"] != r["requests"]:
            failures.append(f"{r['run']}: {r['requests'] - r['ok']} request(s) failed ({r['statuses']})")
    server = Server(args, "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.batch_window_ms),
                    "--max-queue", "16")
    try:
        over = overload(server.url, bodies[0], args.overload)
    finally:
        code = server.stop()
    over["exit_code"] = code
    if set(over["codes"]) - {200, 429} or not over["healthy_after"] or over["request_after"] != 200:
        failures.append(f"overload: {over}")
    meta["overload"] = over
    rss = [r["rss_mb"] for r in rows if r["run"].startswith("batched")]
    md += ["", f"Overload: {args.overload} requests at once, --max-queue 16: status counts {over['codes']} in "
               f"{over['wall_s']:.1f} s; healthy after: {over['healthy_after']}; a request after: "
               f"{over['request_after']}; server exit code after SIGTERM {code}.",
           f"RSS after each batched repeat (MB): {', '.join(f'{x:.0f}' for x in rss)}.",
           "Byte-identical responses across runs: " + ("yes" if not any("differ" in f for f in failures)
                                                       else "NO")]
    meta["failures"] = failures
    save_results(out, meta, rows, md, plots=False)
    print("\n".join(md[-3:]))
    print(f"results: {out}")
    if failures:
        print("FAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
