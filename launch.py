"""Starting Sesame: what `scripts/serve` (`python serve_app.py`) does.

Checks the settings before anything starts (no open port without API keys, the port free),
starts a local Ray or joins `SESAME_RAY_ADDRESS`, deploys `serve_app` on Ray Serve, and stops
cleanly on Ctrl-C or SIGTERM (runs in flight end `interrupted`).

With a Ray of its own (the default) Sesame answers on `SESAME_PORT` straight from its ingress
replica — Serve's *direct ingress*, part of its throughput-optimized mode — instead of through
Serve's HTTP proxy: measured on this project's machines, 35% less CPU per workflow over HTTP
and 1.5× the workflows per second (bench/RESULTS.md). Serve's proxy still runs, on a port of its
own. Joining a running cluster, the cluster's own environment decides (`ray start` must see
these variables), so Sesame then listens through the proxy on `SESAME_PORT`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("sesame.launch")

# Read by Serve's controller and replicas when they start: set before `ray.init`.
THROUGHPUT_ENVIRONMENT = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # Serve keeps a stopping replica's port open this long so load balancers notice; Ctrl-C
    # should not take 30 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def main(argv: list[str] | None = None) -> None:
    import ray
    from pydantic import SecretStr
    from ray import serve

    from graph import logs
    from graph.auth import Authenticator, ConfigurationError
    from graph.settings import Settings
    from graph.store import describe_url
    from serve_app import PROXY_ENVIRONMENT, app_builder

    parser = argparse.ArgumentParser(prog="scripts/serve", description="Starts Sesame; settings "
                                     "are SESAME_* environment variables (see README).")
    parser.add_argument("--wait-for-nodes", type=int, default=1, metavar="N", help=(
        "wait until the Ray cluster has N nodes before starting: the node workers are spread "
        "over the nodes that are up when Sesame starts"))
    options = parser.parse_args(argv)
    logs.configure()
    settings = Settings()
    try:
        Authenticator(settings)
    except ConfigurationError as exc:
        sys.exit(f"sesame: {exc}")
    # Settings given here go to the app explicitly: on a cluster the replica starts on the head
    # node with the environment of `ray start`, not this one's. Secrets never travel this way
    # (Serve logs an application's arguments): replicas read them from their own environment.
    overrides: dict[str, Any] = {name: getattr(settings, name) for name in settings.model_fields_set
                                 if not isinstance(getattr(settings, name), SecretStr)}
    if not _free(settings.host, settings.port):  # Serve would share a busy port silently
        sys.exit(f"sesame: {settings.host}:{settings.port} is in use (another Sesame?): stop it, "
                 "or set SESAME_PORT to another port")
    if "database_url" not in overrides and settings.database_url.startswith("sqlite:///"):
        # Replicas may run in another directory: pin the default file to this one.
        path = Path(settings.database_url.removeprefix("sqlite:///")).resolve()
        overrides["database_url"] = f"sqlite:///{path}"
    direct = settings.ray_address is None and settings.direct_ingress
    proxy_port = _any_free_port(settings.host) if direct else settings.port
    environment = {**PROXY_ENVIRONMENT, **(direct_environment(settings.port) if direct else {})}
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray.serve").addFilter(
        lambda record: "Connecting to existing Serve app" not in record.getMessage())

    # "local": a cluster of our own even where RAY_ADDRESS or a `ray start` on this machine would
    # make plain `ray.init()` join that one (without the environment direct ingress needs).
    ray.init(address=settings.ray_address or "local", include_dashboard=False)
    try:
        while (nodes := sum(node["Alive"] for node in ray.nodes())) < options.wait_for_nodes:
            log.info("waiting for %d Ray nodes (%d up)", options.wait_for_nodes, nodes)
            time.sleep(2)
    except KeyboardInterrupt:
        sys.exit("sesame: stopped while waiting for Ray nodes")
    serve.start(http_options={"host": settings.host, "port": proxy_port})
    serve.run(app_builder(overrides), blocking=False)
    log.info("Sesame is ready at http://%s:%s/ on %d Ray node(s) (store %s%s); Ctrl-C stops it",
             settings.host, settings.port, nodes,
             describe_url(overrides.get("database_url", settings.database_url)),
             f"; Serve's proxy at :{proxy_port}" if direct else "")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where
        signal.signal(signum, lambda *_: stop.set())  # the shell hands SIGINT down as ignored
    stop.wait()
    log.info("stopping: runs in flight are marked interrupted")
    serve.shutdown()
    ray.shutdown()


def direct_environment(port: int) -> dict[str, str]:
    # The replica's own server takes the first free port of [min, max): exactly ours.
    return {**THROUGHPUT_ENVIRONMENT, "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1)}


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
