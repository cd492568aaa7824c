"""The Serve application: a FastAPI gateway (auth, limits, routes, the gallery) in front of the generator deployment.

`build_app` only binds; it is the import path of `serve run deploy/serve.yaml` and what `fsg serve` runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from fsg_ray.serve.auth import authorized, load_api_keys
from fsg_ray.serve.errors import ApiError, error_response, install_error_handlers
from fsg_ray.serve.generator import GeneratorDeployment
from fsg_ray.serve.models import ModelLoadError, SourceUnavailable
from fsg_ray.serve.registry import MalformedModelId, ModelRegistry, ModelRootUnavailable, UnknownModel, check_model_id
from fsg_ray.serve.rendering import IMAGE_FORMATS
from fsg_ray.serve.schemas import check_seed, check_truncation, job_of, parse_body
from fsg_ray.serve.settings import BatchSettings, ServeSettings, settings_from_dict

GALLERY = Path(__file__).parent / "static" / "gallery.html"
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json"})
IMAGE_CACHE_CONTROL = "public, max-age=86400"  # a model id may be retrained; the ETag revalidates it
READY_TIMEOUT_S = 5.0
HEALTH_HEADROOM = 16  # requests a full gateway replica still takes: health probes, listings, the gallery
_log = logging.getLogger("ray.serve")  # Serve's logger: lines land in the replica's own log file


class Gateway:
    """Ingress replica state; the FastAPI app is built per replica by `__serve_build_asgi_app__`."""

    def __init__(self, generator: DeploymentHandle, settings: ServeSettings):
        self.generator, self.settings, self.limits = generator, settings, settings.limits
        self.registry = ModelRegistry(settings.models, settings.model_uris, settings.listing_ttl_s)
        self.keys = load_api_keys(settings.api_keys_file)
        self.pending = 0  # generator calls in flight; the replica's event loop is the only writer

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    async def known_model(self, model_id: str) -> str:
        """400 for a malformed id and 404 for an unknown one, before the generator (and its storage) sees it."""
        try:
            check_model_id(model_id)
            await asyncio.to_thread(self.registry.uri, model_id)
        except MalformedModelId as exc:
            raise ApiError(400, "invalid_model_id", "model", str(exc)) from None
        except UnknownModel as exc:
            raise ApiError(404, "unknown_model", "model", str(exc)) from None
        except ModelRootUnavailable as exc:
            raise self.root_unavailable(exc) from None
        return model_id

    async def model_ids(self) -> list[str]:
        try:
            return await asyncio.to_thread(self.registry.ids)
        except ModelRootUnavailable as exc:
            raise self.root_unavailable(exc) from None

    async def call(self, model_id: str, method: str, *args: Any) -> Any:
        """One generator call for a model, bounded by the request timeout; its failures as API errors.

        Admission is counted here rather than left to Serve's queues so that an overloaded gateway still
        answers in the API's own JSON; Serve's 429 (plain text) only backs it up. A call whose replica died
        (its node lost) is sent once more within the same deadline: a seed renders to the same bytes on
        every replica, so the retry cannot change the answer, and Serve's router has already dropped the
        dead replica, so the retry goes to another one.
        """
        if self.pending >= self.limits.max_pending_requests:
            raise self.overloaded()
        self.pending += 1
        deadline = time.monotonic() + self.limits.request_timeout_s
        try:
            try:
                return await self.attempt(deadline, model_id, method, *args)
            except RayActorError as exc:
                _log.warning("%s for model %s: its replica died (%s); retrying on another replica", method, model_id, type(exc).__name__)
            try:
                return await self.attempt(deadline, model_id, method, *args)
            except (RayActorError, asyncio.TimeoutError):
                raise self.replica_lost() from None
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", None, f"the request took longer than {self.limits.request_timeout_s} s") from None
        except BackPressureError:
            raise self.overloaded() from None
        except UnknownModel as exc:
            raise ApiError(404, "unknown_model", "model", cause_message(exc)) from None
        except SourceUnavailable as exc:
            raise ApiError(404, "no_source", "model", cause_message(exc)) from None
        except ModelLoadError as exc:
            raise ApiError(503, "model_unavailable", "model", cause_message(exc), self.retry_after()) from None
        finally:
            self.pending -= 1

    async def attempt(self, deadline: float, model_id: str, method: str, *args: Any) -> Any:
        """One try of a generator call, given what is left of the request's time."""
        response: DeploymentResponse = getattr(self.generator.options(multiplexed_model_id=model_id), method).remote(*args)
        try:
            return await asyncio.wait_for(response, timeout=deadline - time.monotonic())
        except asyncio.TimeoutError:
            response.cancel()
            raise

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.limits.retry_after_s)}

    def root_unavailable(self, exc: ModelRootUnavailable) -> ApiError:
        return ApiError(503, "models_unavailable", "model", str(exc), self.retry_after())

    def replica_lost(self) -> ApiError:
        return ApiError(503, "replica_unavailable", None, "a generator replica was lost and no other answered in time; retry after the Retry-After seconds", self.retry_after())

    def overloaded(self) -> ApiError:
        return ApiError(429, "overloaded", None, "the generators are busy; retry after the Retry-After seconds", self.retry_after())


def cause_message(exc: Exception) -> str:
    """The replica's own message; Ray's wrapper would add the replica's traceback, which clients must not see."""
    return str(exc.cause) if isinstance(exc, RayTaskError) else str(exc)


def etagged(request: Request, png: bytes) -> Response:
    """Strong ETag of the bytes; a matching If-None-Match gets 304 without the body."""
    etag = '"' + hashlib.sha256(png).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


def wants_grid(request: Request) -> bool:
    return request.headers.get("accept", "").split(",")[0].split(";")[0].strip().lower() == "image/png"


def create_api(gateway: Gateway) -> FastAPI:
    api = FastAPI(title="fsg-ray generators", version="1", description="Adapted StyleGAN2 generators, batched on Ray Serve.", redirect_slashes=False)
    install_error_handlers(api)
    limits = gateway.limits

    @api.middleware("http")
    async def guard(request: Request, call_next):
        """Auth, then the body cap, before any route (or JSON parsing) runs."""
        if request.url.path not in OPEN_PATHS and not authorized(request.headers.get("authorization"), gateway.keys):
            return error_response(401, "unauthorized", "authorization", "authorization: expected 'Bearer <api key>'", {"WWW-Authenticate": "Bearer"})
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return error_response(411, "length_required", "content-length", "content-length: required for a request body")
            if not length.isdigit() or int(length) > limits.max_body_bytes:
                return error_response(413, "body_too_large", "body", f"body: {length[:20]} bytes; at most {limits.max_body_bytes}")
        return await call_next(request)

    @api.get("/", include_in_schema=False)
    async def gallery() -> HTMLResponse:
        return HTMLResponse(GALLERY.read_text())

    @api.get("/healthz", summary="The gateway answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="The generators answer and the model root can be listed")
    async def readyz() -> JSONResponse:
        try:
            device = await asyncio.wait_for(gateway.generator.ready.remote(), timeout=READY_TIMEOUT_S)
            models = await asyncio.wait_for(asyncio.to_thread(gateway.registry.ids), timeout=READY_TIMEOUT_S)
        except Exception as exc:  # any failure means not ready; the reason goes to the probe's log
            return error_response(503, "not_ready", None, f"not ready: {type(exc).__name__}: {str(exc)[:200]}")
        return JSONResponse({"status": "ready", "device": device, "models": len(models)})

    @api.get("/v1/models", summary="Model ids")
    async def list_models() -> dict:
        return {"models": [{"id": model_id} for model_id in await gateway.model_ids()]}

    @api.get("/v1/models/{model}", summary="A model's metadata (loads it)")
    async def describe(model: str) -> dict:
        info = await gateway.call(await gateway.known_model(model), "describe")
        return info.to_json()

    @api.post("/v1/models/{model}/generate", summary="Images for seeds: JSON with base64 images, or one PNG grid for Accept: image/png")
    async def generate(model: str, request: Request) -> Response:
        model_id = await gateway.known_model(model)
        body = parse_body(await request.body())
        grid = wants_grid(request)
        job = job_of(body, limits, grid)
        if grid:
            return Response(await gateway.call(model_id, "grid", job, body.columns), media_type="image/png")
        images = await gateway.call(model_id, "images", job, body.format, body.size)
        if body.format == "raw":
            encoded = [{"seed": seed, **array} for seed, array in zip(job.seeds, images)]
        else:
            encoded = [{"seed": seed, "data": base64.b64encode(data).decode()} for seed, data in zip(job.seeds, images)]
        media_type = IMAGE_FORMATS[body.format][1] if body.format != "raw" else "application/octet-stream"
        return JSONResponse({"model": model_id, "format": body.format, "media_type": media_type, "truncation": job.truncation, "noise": job.noise, "images": encoded})

    @api.get("/v1/models/{model}/images/{seed}.png", summary="One image, as `fsg sample --seeds SEED` writes it (cacheable)")
    async def image(model: str, seed: int, request: Request, truncation: float = 1.0) -> Response:
        model_id = await gateway.known_model(model)
        args = check_seed(seed, limits), check_truncation(truncation, limits)
        return etagged(request, await gateway.call(model_id, "seed_image", *args))

    @api.get("/v1/models/{model}/pairs/{seed}.png", summary="The source sample above the adapted one, same z (cacheable)")
    async def pair(model: str, seed: int, request: Request, truncation: float = 1.0) -> Response:
        model_id = await gateway.known_model(model)
        args = check_seed(seed, limits), check_truncation(truncation, limits)
        return etagged(request, await gateway.call(model_id, "pair_image", *args))

    return api


GENERATOR_CPUS = 1.0
GATEWAY_CPUS = 0.5
GENERATOR, GATEWAY = "Generator", "Gateway"


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve `args` (the ServeSettings fields) -> the bound application: the import path of deploy/serve.yaml."""
    return application(settings_from_dict(dict(args)))


def replica_resources(settings: ServeSettings) -> dict[str, tuple[int, dict[str, float]]]:
    """Deployment name -> (replicas, Ray resources each replica reserves): what the application needs placed."""
    return {
        GENERATOR: (settings.generator_replicas, {"CPU": GENERATOR_CPUS, "GPU": settings.gpus_per_replica}),
        GATEWAY: (1, {"CPU": GATEWAY_CPUS}),
    }


def application(settings: ServeSettings) -> serve.Application:
    """Only binds; nothing runs until Serve deploys it. A Serve config file's `deployments` override these options."""
    replicas, resources = replica_resources(settings)[GENERATOR]
    generator = GeneratorDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": resources["CPU"], "num_gpus": resources["GPU"]},
        user_config={"max_batch_size": settings.batch.max_batch_size, "batch_wait_timeout_s": settings.batch.batch_wait_timeout_s},
    )
    # Batching travels only in user_config and the replica count only in num_replicas: a change of either
    # reconfigures or scales the generator instead of restarting its replicas and the gateway (whose
    # arguments would otherwise differ), so replicas can be added while the endpoint serves.
    unbatched = replace(settings, batch=BatchSettings(), generator_replicas=1, ready_timeout_s=ServeSettings.ready_timeout_s)
    gateway = GatewayDeployment.options(
        max_ongoing_requests=settings.limits.max_pending_requests + HEALTH_HEADROOM,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=settings.limits.retry_after_s),
    )
    return gateway.bind(generator.bind(unbatched), unbatched)


GatewayDeployment = serve.deployment(name=GATEWAY, ray_actor_options={"num_cpus": GATEWAY_CPUS}, max_queued_requests=128)(serve.ingress()(Gateway))


def cpus_needed(settings: ServeSettings) -> float:
    """Logical CPUs the application reserves: every generator replica and the gateway (Serve's proxy and controller take none)."""
    return sum(replicas * resources["CPU"] for replicas, resources in replica_resources(settings).values())
