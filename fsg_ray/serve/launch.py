"""`fsg serve`: start (or join) a Ray cluster, start Serve's HTTP proxy on host:port and run the application."""

from __future__ import annotations

import time

import ray
from ray import serve

from fsg_ray.serve.app import application
from fsg_ray.serve.settings import ServeSettings

APP_NAME = "fsg"


def run_server(settings: ServeSettings, host: str, port: int, address: str | None = None) -> None:
    """Serve until interrupted. Without `address` a local cluster is started for this process alone."""
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
