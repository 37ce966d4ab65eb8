"""``magnet-fast serve --ray``: the same app as a Ray Serve deployment. Each replica builds the app itself
(``serve.ingress`` with a builder: the models load in the replica, the dynamic batching runs inside it);
Ray's HTTP proxy spreads requests over the replicas. One replica per GPU on CUDA; fractional CPUs
locally (``num_cpus``, default 0.5 per replica, so two replicas fit on a 2-core machine)."""
from __future__ import annotations

import signal
import threading


def require_ray_serve() -> None:
    from magnet_fast.errors import MagnetFastError
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise MagnetFastError(f"--ray needs Ray Serve ({e.name or e} is missing): pip install -e \".[ray,serve]\" "
                              "(the ray extra installs ray[data,serve])") from None


def build_ray_app(models: dict, settings: dict | None = None, *, replicas: int = 1, num_cpus: float | None = None,
                  num_gpus: float | None = None, max_ongoing_requests: int | None = None):
    """A bound Ray Serve application serving ``models`` (name -> converted folder; paths, since every
    replica loads its own copy) with ``create_app``'s ``settings``. ``serve.run(build_ray_app(...))``."""
    from ray import serve

    from magnet_fast.serve.app import create_app
    settings = dict(settings or {})
    cuda = str(settings.get("device", "cpu")).startswith("cuda")
    options = {"num_cpus": num_cpus if num_cpus is not None else (1.0 if cuda else 0.5),
               "num_gpus": num_gpus if num_gpus is not None else (1.0 if cuda else 0.0)}
    create_app(models, **settings)                # check folders and settings here, before Ray starts replicas
    # a replica takes up to max_queue + max_batch requests at once: the batching happens inside it
    ongoing = max_ongoing_requests or int(settings.get("max_queue", 64)) + int(settings.get("max_batch") or 16)

    folders = {k: str(v) for k, v in models.items()}

    def build():                                  # runs in each replica (Ray calls a plain function there)
        return create_app(folders, **settings)

    @serve.deployment(name="magnet_fast", num_replicas=replicas, ray_actor_options=options,
                      max_ongoing_requests=ongoing)
    @serve.ingress(build)
    class MagnetFastServe:
        pass

    return MagnetFastServe.bind()


def run_ray(models: dict, settings: dict, *, host: str, port: int, replicas: int = 1, address: str | None = None,
            num_cpus: float | None = None, log=print) -> int:
    """Start Ray (or join ``address``), deploy, and serve until SIGTERM / SIGINT; then shut Serve down."""
    import ray
    from ray import serve
    app = build_ray_app(models, settings, replicas=replicas, num_cpus=num_cpus)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="magnet_fast", route_prefix="/", blocking=False)
        log(f"magnet-fast serve: {replicas} Ray Serve replica(s) of {sorted(models)} on http://{host}:{port}/ "
            "(Ctrl-C or SIGTERM stops)")
        while not stop.wait(0.5):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
