"""``magnet-fast serve``: the HTTP server (uvicorn) or, with ``--ray``, a Ray Serve deployment.

Registered on the main CLI by ``add_parser(subparsers)``; imports nothing from the serve extra until the
command runs, which without it prints one line naming ``pip install -e ".[serve]"`` (exit 2)."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

SERVE_EXTRA = 'pip install -e ".[serve]"'


def add_parser(subparsers) -> None:
    """Register ``magnet-fast serve`` on the CLI's subparsers."""
    s = subparsers.add_parser("serve", help="HTTP API with dynamic batching, a web page and metrics")
    s.add_argument("--model", action="append", metavar="[NAME=]DIR",
                   help="converted model folder (MAGNeT or MusicGen); repeat for several, named NAME=DIR "
                        "(default: the bundled demo)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, help="rows per batch (default 4 on CPU, 16 on CUDA)")
    s.add_argument("--batch-window-ms", type=float, default=20.0,
                   help="how long a batch's first request waits for compatible ones (default 20)")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests per model before 429 (default 64)")
    s.add_argument("--timeout", type=float, help="seconds a request may take from arrival; 504 after, and "
                                                 "dropped if not started (default: none)")
    s.add_argument("--max-duration", type=float, help="longest duration a request may ask for (seconds; "
                                                      "default the model's window, so no long-form)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    s.add_argument("--exact", action="store_true", help="parity attention (see `generate --exact`)")
    s.add_argument("--t5", help="local T5 folder (default: each model's t5/ or its config name)")
    s.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (pip install -e "
                                                      "\".[ray,serve]\")")
    s.add_argument("--replicas", type=int, help="Ray Serve replicas (default 1; one per GPU on CUDA)")
    s.add_argument("--ray-address", help="Ray cluster address (default: a local Ray)")
    s.add_argument("--replica-cpus", type=float, help="CPUs reserved per replica (default 0.5 on CPU, 1 on CUDA)")
    s.set_defaults(func=cmd_serve)


def parse_models(values: list[str] | None) -> dict[str, str]:
    """``--model`` values -> {name: folder}. DIR alone is named after its last path component."""
    from magnet_fast.demo import DEMO_MODEL
    from magnet_fast.errors import UsageError
    if not values:
        return {DEMO_MODEL.name: str(DEMO_MODEL)}
    out: dict[str, str] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or Path(v).exists():                 # a folder whose name holds '=' is a folder
            name, folder = Path(v).name, v
        if not name or not folder:
            raise UsageError(f"--model {v!r}: expected DIR or NAME=DIR")
        if name in out:
            raise UsageError(f"--model: the name {name!r} is given twice; name them: --model NAME=DIR")
        out[name] = folder
    return out


def require_serve() -> None:
    from magnet_fast.errors import UsageError
    missing = []
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(f"serving needs {', '.join(missing)}: {SERVE_EXTRA}")


def _check_port(host: str, port: int) -> None:
    from magnet_fast.errors import UsageError
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGTERM ends with exit code 0 after the graceful shutdown (stop
        accepting, finish in-flight requests) instead of re-raising the signal."""

        def handle_exit(self, sig, frame) -> None:
            import signal
            if sig == signal.SIGTERM:
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    return Server


def cmd_serve(args) -> int:
    from magnet_fast.errors import UsageError
    require_serve()
    for name in ("max_batch", "max_queue", "replicas"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("batch_window_ms", "timeout", "max_duration", "replica_cpus"):
        value = getattr(args, name)
        if value is not None and not (value >= 0 and value != float("inf")):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if not args.ray and (args.replicas is not None or args.ray_address or args.replica_cpus is not None):
        raise UsageError("--replicas, --ray-address and --replica-cpus need --ray")
    models = parse_models(args.model)
    settings = {"max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms, "max_queue": args.max_queue,
                "timeout": args.timeout, "device": args.device, "dtype": args.dtype, "exact": args.exact,
                "t5": args.t5, "max_duration": args.max_duration}
    if args.ray:
        _check_port(args.host, args.port)
        from magnet_fast.serve.ray_serve import require_ray_serve, run_ray
        require_ray_serve()
        return run_ray(models, settings, host=args.host, port=args.port, replicas=args.replicas or 1,
                       address=args.ray_address, num_cpus=args.replica_cpus)
    import uvicorn

    from magnet_fast.serve.app import create_app
    app = create_app(models, **settings)             # folders and settings checked (exit 2 with one line)
    _check_port(args.host, args.port)
    state = app.state.serve
    state.start()                                    # load now: a bad model is one line, not a traceback
    print(f"magnet-fast serve: {', '.join(models)} on http://{args.host}:{args.port}/ (web page /, API "
          f"POST /v1/generate, docs /docs, metrics /metrics; max batch {state.max_batch}, window "
          f"{state.window_s * 1000:g} ms, queue {state.max_queue})", file=sys.stderr, flush=True)
    server = _server_class()(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                            timeout_graceful_shutdown=None, access_log=False))
    server.run()
    print("magnet-fast serve: stopped", file=sys.stderr, flush=True)
    return 0 if server.started else 1
