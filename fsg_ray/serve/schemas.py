"""The body of POST /generate and its checks against the limits; a violation raises ApiError naming the field."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from fsg_ray.serve.errors import ApiError, validation_error
from fsg_ray.serve.rendering import Job
from fsg_ray.serve.settings import Limits


class GenerateBody(BaseModel):
    """Seeds as a list, or as count + start; the rest has defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seeds: list[StrictInt] | None = None
    count: StrictInt | None = None
    start: StrictInt = 0
    truncation: float = Field(default=1.0, allow_inf_nan=False)
    noise: Literal["const", "seeded"] = "const"
    format: Literal["png", "webp", "jpeg", "raw"] = "png"
    size: StrictInt | None = None
    columns: StrictInt = 8


def parse_body(raw: bytes) -> GenerateBody:
    if not raw.strip():
        raise ApiError(400, "invalid_request", "body", "body: expected a JSON object such as {\"seeds\": [1, 2, 3]}")
    try:
        return GenerateBody.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def check_seed(seed: int, limits: Limits, field: str = "seed") -> int:
    if not 0 <= seed <= limits.max_seed:
        raise ApiError(400, "out_of_range", field, f"{field}: {seed} is outside 0..{limits.max_seed}")
    return seed


def check_truncation(truncation: float, limits: Limits) -> float:
    if not (math.isfinite(truncation) and limits.min_truncation <= truncation <= limits.max_truncation):
        raise ApiError(400, "out_of_range", "truncation", f"truncation: {truncation} is outside {limits.min_truncation}..{limits.max_truncation}")
    return truncation


def seeds_of(body: GenerateBody, limits: Limits) -> tuple[int, ...]:
    if (body.seeds is None) == (body.count is None):
        raise ApiError(400, "invalid_request", "seeds", "seeds: give either a list of seeds or count (+ start), not both or neither")
    n = len(body.seeds) if body.seeds is not None else body.count
    if not 1 <= n <= limits.max_images_per_request:
        field = "seeds" if body.seeds is not None else "count"
        raise ApiError(400, "out_of_range", field, f"{field}: asks for {n} images; 1..{limits.max_images_per_request} per request")
    if body.seeds is not None:
        return tuple(check_seed(seed, limits, f"seeds[{i}]") for i, seed in enumerate(body.seeds))
    check_seed(body.start, limits, "start")
    return tuple(check_seed(body.start + i, limits, "start") for i in range(n))


def job_of(body: GenerateBody, limits: Limits, grid: bool) -> Job:
    """The checked job; also checks size, columns and the format against the response type."""
    if body.size is not None:
        if body.format == "raw" or grid:
            raise ApiError(400, "invalid_request", "size", "size: only for png, webp or jpeg images in a JSON answer")
        if not 8 <= body.size <= limits.max_output_size:
            raise ApiError(400, "out_of_range", "size", f"size: {body.size} is outside 8..{limits.max_output_size}")
    if grid and body.format != "png":
        raise ApiError(400, "invalid_request", "format", f"format: a grid (Accept: image/png) is a PNG, got {body.format!r}")
    if not 1 <= body.columns <= limits.max_columns:
        raise ApiError(400, "out_of_range", "columns", f"columns: {body.columns} is outside 1..{limits.max_columns}")
    return Job(seeds_of(body, limits), check_truncation(body.truncation, limits), body.noise)
