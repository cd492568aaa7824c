"""The generator deployment: models multiplexed per replica (LRU) and single images batched across requests.

A request for 16 seeds and one for 3 enter `forward_batch` as two jobs counting 16 and 3 images, and
leave from one forward. Forwards and model loads run in threads: the replica's event loop keeps
answering health checks while a batch renders. Batch size and wait come from `user_config`.
"""

from __future__ import annotations

import asyncio
import time

import ray
import torch
from ray import serve

from fsg_ray.serve.metrics import GeneratorMetrics
from fsg_ray.serve.models import LoadedModel, ModelInfo, ModelLoadError, load_model
from fsg_ray.serve.registry import ModelRegistry, ModelRootUnavailable
from fsg_ray.serve.rendering import Job, encode, grid_png, pair_png, raw_array, render_jobs, seed_png
from fsg_ray.serve.settings import BatchSettings, ServeSettings, batch_settings


def images_in(items: list[tuple[LoadedModel, Job]]) -> int:
    """serve.batch's batch_size_fn: a job counts as its images (it must never raise: ray#66140 hangs the loop)."""
    return sum(len(job.seeds) for _, job in items)


def chunks(job: Job, size: int) -> list[Job]:
    """A job larger than one batch, split so that no batch item exceeds max_batch_size."""
    return [Job(job.seeds[i : i + size], job.truncation, job.noise) for i in range(0, len(job.seeds), size)]


@serve.deployment(name="Generator", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, max_queued_requests=64)
class GeneratorDeployment:
    def __init__(self, settings: ServeSettings):
        self.registry = ModelRegistry(settings.models, settings.model_uris, settings.listing_ttl_s)
        self.failed_load_ttl_s = settings.failed_load_ttl_s
        self.device = torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")
        self.batch = BatchSettings()
        self.metrics = GeneratorMetrics()
        self.failed: dict[str, tuple[float, ModelLoadError]] = {}

        async def load(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        # Wrapped here rather than at class level so that the LRU size comes from the settings.
        self.get_model = serve.multiplexed(max_num_models_per_replica=settings.models_per_replica)(load)

    def reconfigure(self, user_config: dict) -> None:
        self.batch = batch_settings(user_config)
        self.forward_batch.set_max_batch_size(self.batch.max_batch_size)
        self.forward_batch.set_batch_wait_timeout_s(self.batch.batch_wait_timeout_s)

    async def _load(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            try:
                run_uri = await asyncio.to_thread(self.registry.uri, model_id)
            except ModelRootUnavailable as exc:
                raise ModelLoadError(f"model: {model_id!r} cannot be loaded: {exc}") from None
            model = await asyncio.to_thread(load_model, model_id, run_uri, self.device)
        except ModelLoadError as exc:
            self.failed[model_id] = (time.monotonic(), exc)
            self.metrics.load_failures.inc(tags={"model": model_id})
            raise
        self.metrics.load_seconds.observe(time.perf_counter() - started, tags={"model": model_id})
        return model

    async def _model(self) -> LoadedModel:
        """The request's model; a recent load failure is answered again without reading storage."""
        model_id = serve.get_multiplexed_model_id()
        failure = self.failed.get(model_id)
        if failure is not None and time.monotonic() - failure[0] < self.failed_load_ttl_s:
            raise failure[1]
        return await self.get_model(model_id)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=images_in)
    async def forward_batch(self, items: list[tuple[LoadedModel, Job]]) -> list[torch.Tensor]:
        """Serve splits batches by model id, so one sampler renders them all."""
        sampler = items[0][0].sampler
        self.metrics.batch_images.observe(images_in(items))
        return await asyncio.to_thread(render_jobs, sampler, [job for _, job in items], self.device)

    async def _images(self, model: LoadedModel, job: Job) -> torch.Tensor:
        parts = await asyncio.gather(*(self.forward_batch((model, part)) for part in chunks(job, self.batch.max_batch_size)))
        self.metrics.images.inc(len(job.seeds), tags={"model": model.info.id})
        return torch.cat(parts)

    async def images(self, job: Job, fmt: str, size: int | None) -> list:
        """Per seed: encoded bytes, or for fmt 'raw' the float array as a JSON-ready dict."""
        images = await self._images(await self._model(), job)
        if fmt == "raw":
            return [raw_array(image) for image in images]
        return await asyncio.to_thread(lambda: [encode(image, fmt, size) for image in images])

    async def grid(self, job: Job, columns: int) -> bytes:
        images = await self._images(await self._model(), job)
        return await asyncio.to_thread(grid_png, images, columns)

    async def seed_image(self, seed: int, truncation: float) -> bytes:
        """Rendered alone, not batched: the bytes (and the ETag) must not depend on other requests."""
        model = await self._model()
        png = await asyncio.to_thread(seed_png, model.sampler, seed, truncation, self.device)
        self.metrics.images.inc(1, tags={"model": model.info.id})
        return png

    async def pair_image(self, seed: int, truncation: float) -> bytes:
        model = await self._model()
        source = await asyncio.to_thread(model.source_sampler)
        png = await asyncio.to_thread(pair_png, source, model.sampler, seed, truncation, self.device)
        self.metrics.images.inc(2, tags={"model": model.info.id})
        return png

    async def describe(self) -> ModelInfo:
        return (await self._model()).info

    async def ready(self) -> str:
        return str(self.device)
