"""`fsg eval`: the whole evaluation protocol of SPEC §4 for one generator, written as metrics.json + report.html.

One call loads the generator (and optionally its source), computes the requested metrics with the
extractors found on this machine, and writes machine-readable numbers next to a self-contained HTML
report. Every number carries the name of the extractor that produced it (`fid` vs `fid_offline`), and
a metric that does not apply is listed as not defined with the reason, never dropped silently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from fsg_ray import storage
from fsg_ray.adapt.methods.minegan import load_miner
from fsg_ray.data import toy
from fsg_ray.data.images import load_eval_set, load_target
from fsg_ray.grids import image_grid, pair_grid, save_png, seeded_z, to_pil
from fsg_ray.metrics import LpipsModel, build_extractor, build_lpips, compute_fid_kid, correspondence_error, intra_cluster_lpips
from fsg_ray.metrics.features import seeded_latents
from fsg_ray.nets.checkpoints import build_generator, read_checkpoint
from fsg_ray.nets.stylegan2 import Generator
from fsg_ray.report import Figure, render_report

METRIC_NAMES: tuple[str, ...] = ("fid", "kid", "intra_lpips", "corr")
GRID_SEEDS = list(range(8))
MEMBERS_SHOWN = 8  # cluster members shown per training image in the report


class EvalError(ValueError):
    """An evaluation request that cannot be carried out as asked; the message names the bad value."""


@dataclass(frozen=True)
class EvalSettings:
    """How many images each metric uses, and the seed; stored with the numbers so they can be reproduced."""

    n_generated: int = 5000  # FID/KID samples (SPEC §4: >= 5000)
    n_real: int = 5000  # held-out images of a toy:NAME target; a folder/zip/Parquet target is used whole
    n_lpips: int = 1000  # intra-cluster LPIPS samples (SPEC §4)
    max_per_cluster: int = 50
    n_corr: int = 256
    seed: int = 0
    truncation: float = 1.0
    batch_size: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000

    def __post_init__(self) -> None:
        for key in ("n_generated", "n_real", "n_lpips", "max_per_cluster", "n_corr", "batch_size", "kid_subsets", "kid_subset_size"):
            if getattr(self, key) < 1:
                raise EvalError(f"{key}: expected a positive integer, got {getattr(self, key)}")
        if self.n_generated < 2 or self.n_real < 2:
            raise EvalError(f"n_generated and n_real: FID needs at least 2 images each, got {self.n_generated} and {self.n_real}")


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` found: metric values keyed by extractor-qualified names, and why others are absent."""

    generator: str
    target: str
    source: str | None
    train: str | None  # the few-shot images intra-LPIPS clusters around
    metrics: dict[str, float]
    not_defined: dict[str, str]
    extractors: dict[str, str]  # "features" (FID/KID) and "lpips" -> the model names used
    settings: EvalSettings
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def offline(self) -> list[str]:
        """Names of the offline (not comparable with published numbers) extractors that were used."""
        return [name for name in self.extractors.values() if name.startswith("offline:")]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "offline_extractors": self.offline}


def parse_metrics(text: str) -> tuple[str, ...]:
    """'fid,kid' -> ('fid', 'kid'); an unknown or repeated name raises EvalError naming it."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise EvalError(f"metrics: no metric named in {text!r}; choose from {', '.join(METRIC_NAMES)}")
    for name in names:
        if name not in METRIC_NAMES:
            raise EvalError(f"metrics: unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    if len(set(names)) != len(names):
        raise EvalError(f"metrics: {text!r} names a metric twice")
    return names


def _toy_name(target: str) -> str | None:
    return target.removeprefix("toy:") if target.startswith("toy:") else None


def correspondence_undefined(target: str, source_uri: str | None) -> str | None:
    """Why the correspondence error cannot be measured for this request, or None when it can."""
    name = _toy_name(target)
    if name is None or toy.image_transform(name) is None:
        return f"target {target} is not an image-space toy domain (only toy:sketch and toy:painting define transform(G_s(z)))"
    if source_uri is None:
        return "no source generator given (pass source_uri / --source)"
    return None


def _train_images_spec(train: str | None, target: str, ckpt: dict[str, Any]) -> str | None:
    """The few-shot set intra-LPIPS clusters around: given > toy target's 10-shot set > the run's recorded target."""
    if train is not None:
        return train
    if _toy_name(target) is not None:
        return target
    return ckpt.get("target")


class MinedGenerator(nn.Module):
    """A MineGAN run's sampler: its frozen G behind the trained miner, which is no part of `g_ema`."""

    def __init__(self, g: Generator, miner: nn.Module):
        super().__init__()
        self.g, self.miner = g, miner
        self.config, self.style_dim = g.config, g.style_dim

    def forward(self, z: Tensor, truncation: float = 1.0, noise: str = "const") -> Tensor:
        return self.g(self.miner(z), truncation=truncation, noise=noise)


def load_sampler(uri: str, device: torch.device | str = "cpu") -> tuple[Generator | MinedGenerator, dict[str, Any]]:
    """What samples a run: the EMA generator of a checkpoint; for a MineGAN run, behind its miner (G alone would show the source)."""
    ckpt = read_checkpoint(uri)
    g = build_generator(ckpt)
    if ckpt.get("method") == "minegan":
        g = MinedGenerator(g, load_miner(ckpt))
    return g.to(device), ckpt


@torch.no_grad()
def _correspondence_figure(G_s: Generator, G_t: Generator, target: str, with_transform: bool) -> Figure:
    z = seeded_z(GRID_SEEDS, G_t.style_dim).to(next(G_t.parameters()).device)
    source, adapted = G_s(z, noise="const").clamp(-1, 1), G_t(z, noise="const").clamp(-1, 1)
    if not with_transform:
        return Figure("correspondence", "Source ↔ adapted", "Each adapted sample (lower row) under the source sample for the same z and noise.", pair_grid(source, adapted))
    expected = toy.image_transform(_toy_name(target))(source)
    grid = to_pil(make_grid(torch.cat([source, expected, adapted]).cpu(), nrow=len(z), padding=2, pad_value=1.0))
    caption = f"Rows: source G_s(z); {target}'s transform of it (what perfect correspondence gives); adapted G_t(z). Same z and noise per column."
    return Figure("correspondence", "Source ↔ adapted", caption, grid)


@torch.no_grad()
def _cluster_figure(G: Generator, train_images: Tensor, lpips_result: dict[str, Any], settings: EvalSettings) -> Figure:
    """One row per training image: the image, then up to MEMBERS_SHOWN samples assigned to its cluster."""
    assignment = torch.tensor(lpips_result["assignment"])
    z_all = seeded_latents(settings.n_lpips, G.style_dim, settings.seed)
    device = next(G.parameters()).device
    blank = torch.ones_like(train_images[0])
    rows = []
    for k, image in enumerate(train_images):
        members = (assignment == k).nonzero().flatten()[:MEMBERS_SHOWN]
        samples = G(z_all[members].to(device), truncation=settings.truncation, noise="const").clamp(-1, 1).cpu() if len(members) else train_images[:0]
        rows += [image[None], samples, blank.expand(MEMBERS_SHOWN - len(samples), -1, -1, -1)]
    grid = to_pil(make_grid(torch.cat(rows), nrow=1 + MEMBERS_SHOWN, padding=2, pad_value=1.0))
    sizes = ", ".join(f"{k}: {s}" for k, s in enumerate(lpips_result["cluster_sizes"]))
    caption = f"First column: training image k; then up to {MEMBERS_SHOWN} of the {settings.n_lpips} samples whose LPIPS-nearest training image is k. Cluster sizes {sizes}."
    return Figure("clusters", "Intra-LPIPS clusters", caption, grid)


def plan_metrics(metrics: Sequence[str] | None, target: str, source_uri: str | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(metrics to compute, {metric: why it is not defined}); None asks for every metric defined here.

    A metric named explicitly that cannot be computed raises EvalError instead of being skipped.
    """
    requested = tuple(METRIC_NAMES if metrics is None else metrics)
    for name in requested:
        if name not in METRIC_NAMES:
            raise EvalError(f"metrics: unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    reason = correspondence_undefined(target, source_uri) if "corr" in requested else None
    if reason is None:
        return requested, {}
    if metrics is not None:
        raise EvalError(f"metrics: corr is not defined here: {reason}")
    return tuple(m for m in requested if m != "corr"), {"corr": reason}


@dataclass
class _Findings:
    """What the metric steps of one evaluation collect, in the order they run."""

    values: dict[str, float] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)


def _add_fid_kid(found: _Findings, G_t: Generator, target: str, requested: tuple[str, ...], settings: EvalSettings, inception_path: str | None, device: torch.device) -> None:
    extractor = build_extractor(inception_path, device)
    real = load_eval_set(target, G_t.config.size, settings.n_real)
    s = settings
    fk = compute_fid_kid(G_t, real, s.n_generated, extractor, s.seed, s.batch_size, s.truncation, s.kid_subsets, s.kid_subset_size)
    found.values.update({k: v for k, v in fk.items() if k.split("_")[0] in requested and isinstance(v, float)})
    found.extractors["features"] = extractor.name
    found.details["fid_kid"] = {"n_gen": fk["n_gen"], "n_real": fk["n_real"]}


def _add_intra_lpips(found: _Findings, G_t: Generator, train_spec: str, settings: EvalSettings, lpips_model: LpipsModel) -> None:
    train_images = load_target(train_spec, G_t.config.size)
    s = settings
    il = intra_cluster_lpips(G_t, train_images, s.n_lpips, s.max_per_cluster, s.seed, s.batch_size, s.truncation, lpips_model)
    found.values.update({k: v for k, v in il.items() if k.startswith("intra_lpips")})
    found.extractors["lpips"] = il["lpips"]
    found.details["intra_lpips"] = {"cluster_sizes": il["cluster_sizes"], "per_cluster": il["per_cluster"]}
    found.figures.append(_cluster_figure(G_t, train_images, il, settings))


def _add_corr(found: _Findings, G_s: Generator, G_t: Generator, target: str, settings: EvalSettings, lpips_model: LpipsModel) -> None:
    transform = toy.image_transform(_toy_name(target))
    ce = correspondence_error(G_s, G_t, transform, settings.n_corr, settings.seed, settings.batch_size, settings.truncation, lpips_model)
    found.values.update({k: v for k, v in ce.items() if k.startswith("corr_")})
    found.extractors["lpips"] = ce["lpips"]


@torch.no_grad()
def _samples_figure(G_t: Generator) -> Figure:
    z = seeded_z(GRID_SEEDS, G_t.style_dim).to(next(G_t.parameters()).device)
    return Figure("samples", "Samples", f"Samples for seeds {GRID_SEEDS[0]}-{GRID_SEEDS[-1]}, truncation 1.", image_grid(G_t(z, noise="const").clamp(-1, 1).cpu()))


def evaluate(
    generator_uri: str,
    target: str,
    source_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    settings: EvalSettings = EvalSettings(),
    out: str | None = None,
    train: str | None = None,
    inception_path: str | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate the EMA generator at `generator_uri` against `target` (folder, .zip, .parquet or toy:NAME).

    `metrics=None` computes every metric that is defined here and lists the others under
    `not_defined`; naming a metric that cannot be computed (corr without a source or for a target that
    is not image-space toy) raises EvalError. `train` is the few-shot set intra-LPIPS clusters around
    (default: a toy target's 10 shots, else the target recorded in the generator's checkpoint). With
    `out`, writes `metrics.json`, `report.html` and the report's grids as PNGs there (local or s3://).
    """
    requested, not_defined = plan_metrics(metrics, target, source_uri)
    started = time.perf_counter()
    torch_device = torch.device(device)
    G_t, ckpt = load_sampler(generator_uri, torch_device)
    G_s = None
    if source_uri is not None:
        G_s, _ = load_sampler(source_uri, torch_device)
        if (G_s.config.size, G_s.style_dim) != (G_t.config.size, G_t.style_dim):
            raise EvalError(
                f"source {source_uri} makes {G_s.config.size}px images from {G_s.style_dim}-d z, "
                f"generator {generator_uri} {G_t.config.size}px from {G_t.style_dim}-d z"
            )
    train_spec = _train_images_spec(train, target, ckpt) if "intra_lpips" in requested else None
    if "intra_lpips" in requested and train_spec is None:
        raise EvalError(f"intra_lpips: {generator_uri} records no training images and target {target} is not toy:NAME; pass train= / --train")

    found = _Findings()
    lpips_model = build_lpips(device=torch_device) if {"intra_lpips", "corr"} & set(requested) else None
    if {"fid", "kid"} & set(requested):
        _add_fid_kid(found, G_t, target, requested, settings, inception_path, torch_device)
    if "intra_lpips" in requested:
        _add_intra_lpips(found, G_t, train_spec, settings, lpips_model)
    if "corr" in requested:
        _add_corr(found, G_s, G_t, target, settings, lpips_model)
    first = _correspondence_figure(G_s, G_t, target, with_transform="corr" in requested) if G_s is not None else _samples_figure(G_t)

    elapsed = time.perf_counter() - started
    result = EvalResult(generator_uri, target, source_uri, train_spec, found.values, not_defined, found.extractors, settings, found.details, elapsed)
    if out is not None:
        write_outputs(result, [first, *found.figures], out)
    return result


def write_outputs(result: EvalResult, figures: Sequence[Figure], out: str) -> None:
    """metrics.json, the self-contained report.html and each figure as `<slug>.png` under `out` (local or s3://)."""
    storage.write_bytes(storage.join(out, "metrics.json"), json.dumps(result.to_json(), indent=2).encode())
    storage.write_bytes(storage.join(out, "report.html"), render_report(result, figures).encode())
    for figure in figures:
        save_png(storage.join(out, f"{figure.slug}.png"), figure.image)


