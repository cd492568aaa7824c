"""A served model: the run's sampler (G_ema, behind its miner for MineGAN) on the replica's device, and what it is."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from fsg_ray import storage
from fsg_ray.adapt.run import EXPORT_FILE
from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, SHIPPED_MODELS, CheckpointError, latest_checkpoint_dir
from fsg_ray.serve.registry import UnknownModel


class ModelLoadError(RuntimeError):
    """A model whose checkpoint exists but cannot be loaded (answered 503 for that model only)."""


class SourceUnavailable(LookupError):
    """A model whose recorded source generator this server cannot read, so it has no pair view."""


@dataclass(frozen=True)
class ModelInfo:
    """What GET /v1/models/{model} answers."""

    id: str
    checkpoint: str  # relative to the model's run, e.g. checkpoint_000300/state.pt
    method: str | None
    step: int | None
    source: str | None
    target: str | None
    resolution: int
    style_dim: int
    load_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    info: ModelInfo
    sampler: nn.Module
    device: torch.device
    source_uri: str | None
    source: nn.Module | None = field(default=None, repr=False)

    def source_sampler(self) -> nn.Module:
        """The source generator, read on the first pair request and kept with the model."""
        if self.source is None:
            if self.source_uri is None:
                raise SourceUnavailable(f"model: {self.info.id!r} records no source generator, so it has no pair view")
            try:
                self.source, _ = load_sampler(self.source_uri, self.device)
            except (CheckpointError, storage.StorageError, OSError) as exc:
                raise SourceUnavailable(f"model: the source {self.source_uri!r} of {self.info.id!r} cannot be read here ({type(exc).__name__})") from exc
        return self.source


def checkpoint_of(run_uri: str, model_id: str) -> str:
    """A run's latest checkpoint, else its exported generator.pt; a checkpoint file or shipped name as is."""
    if run_uri in SHIPPED_MODELS:
        return run_uri
    filesystem, path = storage.resolve(run_uri)
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.File:
        return run_uri
    if kind == pafs.FileType.Directory:
        latest = latest_checkpoint_dir(run_uri)
        if latest is not None:
            return storage.join(run_uri, latest, CHECKPOINT_FILE)
        if storage.exists(storage.join(run_uri, EXPORT_FILE)):
            return storage.join(run_uri, EXPORT_FILE)
    raise UnknownModel(f"model: {model_id!r} holds no checkpoint_*/{CHECKPOINT_FILE} or {EXPORT_FILE}")


def load_model(model_id: str, run_uri: str, device: torch.device) -> LoadedModel:
    """Read a model's checkpoint; a corrupt or mismatched file, or storage that does not answer, raises
    ModelLoadError naming the file within the run. A request waits for no storage outage: it gets a 503 now
    and the model loads on a later request (a failed load is not cached)."""
    started = time.perf_counter()
    with storage.without_retries():
        try:
            checkpoint_uri = checkpoint_of(run_uri, model_id)
        except (storage.StorageError, OSError) as exc:
            raise ModelLoadError(f"model: {model_id!r} cannot be loaded: its run {run_uri} cannot be listed: {' '.join(str(exc).split())}") from None
        shown = checkpoint_uri.removeprefix(run_uri).lstrip("/") or checkpoint_uri
        try:
            sampler, ckpt = load_sampler(checkpoint_uri, device)
        except (CheckpointError, storage.StorageError, OSError) as exc:
            reason = str(exc).replace(checkpoint_uri, shown)
            raise ModelLoadError(f"model: {model_id!r} cannot be loaded: {reason}") from None
    sampler.requires_grad_(False)
    source = ckpt.get("source")
    recorded_source = source if isinstance(source, str) and source != ckpt["uri"] else None
    info = ModelInfo(
        id=model_id,
        checkpoint=shown,
        method=ckpt.get("method"),
        step=ckpt.get("step"),
        source=recorded_source,
        target=ckpt.get("target"),
        resolution=sampler.config.size,
        style_dim=sampler.style_dim,
        load_seconds=round(time.perf_counter() - started, 3),
    )
    return LoadedModel(info, sampler, device, recorded_source)
