"""`fsg serve`: start (or join) a Ray cluster, start Serve's HTTP proxy on host:port and run the application."""

from __future__ import annotations

import socket
import time

import ray
from ray import serve

from fsg_ray.config import ConfigError
from fsg_ray.serve.app import application
from fsg_ray.serve.settings import ServeSettings

APP_NAME = "fsg"


def run_server(settings: ServeSettings, host: str, port: int, address: str | None = None) -> None:
    """Serve until interrupted. Without `address` a local cluster is started for this process alone."""
    if address is None:
        check_can_listen(host, port)
    ray.init(address=address or "local")
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(settings), name=APP_NAME, route_prefix="/")
        print(f"serving {settings.models or ', '.join(settings.model_uris)} at http://{host}:{port}/ (gallery), API under /v1, docs at /docs; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: replicas finish their requests first (about 10 s)", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def check_can_listen(host: str, port: int) -> None:
    """Refuse a taken or unusable address before starting Ray: Serve's proxy would fail after Ray started, in a traceback.

    Only for a cluster this process starts: on a joined cluster the port may be Serve's own proxy.
    """
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"--host/--port {host}:{port}: cannot listen there ({exc.strerror or exc})") from None
