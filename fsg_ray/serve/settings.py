"""What an endpoint serves and how: typed, frozen settings read from `fsg serve` flags, a YAML file or Serve `args`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fsg_ray.config import ConfigError, config_from_dict
from fsg_ray.serve.registry import MalformedModelId, check_model_id


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond is answered 4xx naming the field."""

    max_images_per_request: int = 64
    max_body_bytes: int = 16_384
    max_seed: int = 2**32 - 1
    min_truncation: float = 0.0
    max_truncation: float = 2.0
    max_output_size: int = 1024
    max_columns: int = 64
    request_timeout_s: float = 60.0
    max_pending_requests: int = 48  # generator calls one gateway replica has in flight; more are answered 429
    retry_after_s: int = 1  # the Retry-After of a 429 (busy) or a 503 (a model or replica unavailable)

    def __post_init__(self) -> None:
        for key in ("max_images_per_request", "max_body_bytes", "max_seed", "max_output_size", "max_columns", "max_pending_requests", "retry_after_s"):
            if getattr(self, key) < 1:
                raise ConfigError(f"limits.{key}: expected a positive integer, got {getattr(self, key)}")
        if not 0.0 <= self.min_truncation <= self.max_truncation:
            raise ConfigError(f"limits.min_truncation/max_truncation: expected 0 <= min <= max, got {self.min_truncation}, {self.max_truncation}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"limits.request_timeout_s: expected > 0, got {self.request_timeout_s}")


@dataclass(frozen=True)
class BatchSettings:
    """The generator deployment's `user_config`: changed by `serve deploy` without restarting replicas."""

    max_batch_size: int = 32  # images per forward
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"user_config.max_batch_size: expected a positive integer, got {self.max_batch_size}")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"user_config.batch_wait_timeout_s: expected >= 0, got {self.batch_wait_timeout_s}")


def batch_settings(user_config: dict[str, Any] | None) -> BatchSettings:
    return config_from_dict(BatchSettings, user_config or {}, "user_config.")


@dataclass(frozen=True)
class ServeSettings:
    """A model root (each run a model, named by its directory) and/or explicit ids; limits; auth; placement."""

    models: str | None = None  # URI whose subdirectories are runs: s3://bucket/runs/ or a local path
    model_uris: dict = field(default_factory=dict)  # explicit id -> run or checkpoint URI (or toy:faces)
    models_per_replica: int = 4  # @serve.multiplexed LRU size: generators held by one replica
    listing_ttl_s: float = 10.0  # how stale the list of runs under `models` may be
    failed_load_ttl_s: float = 30.0  # a model that failed to load is not retried (not re-read) for this long
    api_keys_file: str | None = None  # one bearer token per line (a mounted secret); FSG_SERVE_API_KEYS adds more
    generator_replicas: int = 1
    gpus_per_replica: float = 0.0
    ready_timeout_s: float = 300.0  # how long `fsg serve` waits for every replica to run (a cluster may autoscale) before it fails naming what is missing
    limits: Limits = Limits()
    batch: BatchSettings = BatchSettings()

    def __post_init__(self) -> None:
        if self.models is None and not self.model_uris:
            raise ConfigError("models: give a model root (--models s3://bucket/runs/) or model_uris")
        for model_id, uri in self.model_uris.items():
            try:
                check_model_id(model_id)
            except MalformedModelId as exc:
                raise ConfigError(f"model_uris: {exc}") from None
            if not isinstance(uri, str):
                raise ConfigError(f"model_uris.{model_id}: expected a URI string, got {uri!r}")
        for key in ("models_per_replica", "generator_replicas"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        if self.ready_timeout_s <= 0:
            raise ConfigError(f"ready_timeout_s: expected > 0, got {self.ready_timeout_s}")
        if self.gpus_per_replica < 0:
            raise ConfigError(f"gpus_per_replica: expected >= 0, got {self.gpus_per_replica}")


def settings_from_dict(data: dict[str, Any]) -> ServeSettings:
    """Serve `args` or a parsed YAML file -> settings; unknown keys and ill-typed values raise ConfigError."""
    return config_from_dict(ServeSettings, data)


def load_settings(path: str | Path | None = None, **flags: Any) -> ServeSettings:
    """The YAML file (if any), then the command-line flags that were given (None means not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read serve settings ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    data.update({key: value for key, value in flags.items() if value is not None})
    return settings_from_dict(data)
