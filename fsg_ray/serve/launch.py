"""`fsg serve`: start (or join) a Ray cluster, start Serve's HTTP proxy on host:port and run the application."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import time

import ray
from ray import serve

from fsg_ray.config import ConfigError
from fsg_ray.ray.cluster import start_local
from fsg_ray.serve.app import application, cpus_needed, replica_resources
from fsg_ray.serve.auth import KEYS_ENV, load_api_keys
from fsg_ray.serve.readiness import wait_until_running
from fsg_ray.serve.settings import ServeSettings

APP_NAME = "fsg"


def run_server(settings: ServeSettings, host: str, port: int, address: str | None = None, allow_unauthenticated: bool = False) -> None:
    """Serve until interrupted. Without `address` a local cluster is started for this process alone."""
    check_not_open_by_accident(host, load_api_keys(settings.api_keys_file), allow_unauthenticated)
    if address is None:
        check_can_listen(host, port)
        # Sized for what the settings reserve, not the core count: two one-CPU replicas and the gateway
        # on a 2-core box would otherwise wait to be scheduled forever (the replicas then share the cores).
        start_local(max(os.cpu_count() or 1, math.ceil(cpus_needed(settings))))
    else:
        ray.init(address=address)
    try:
        serve.start(http_options={"host": host, "port": port})
        # Not serve.run: it waits forever for a replica that no node can hold.
        serve.run_many([serve.RunTarget(application(settings), name=APP_NAME, route_prefix="/")], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        wait_until_running(APP_NAME, replica_resources(settings), settings.ready_timeout_s)
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


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` ("localhost", 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whatever it resolves to, it is not known to be private to this machine
        return False


def check_not_open_by_accident(host: str, keys: tuple[str, ...], allow_unauthenticated: bool) -> None:
    """Refuse to put a keyless API on an address other machines reach, unless that is declared to be the intent."""
    if keys or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host}: other machines can reach this address and no API key is configured, so anyone could generate images. "
        f"Set {KEYS_ENV}=key1,key2 or api_keys_file in --config, or pass --allow-unauthenticated if the API is meant to be open"
    )
