"""`fsg eval`: the whole evaluation protocol of SPEC §4 for one generator, written as metrics.json + report.html.

One call loads the generator (and optionally its source), computes the requested metrics with the
extractors found on this machine, and writes machine-readable numbers next to a self-contained HTML
report. Every number carries the name of the extractor that produced it (`fid` vs `fid_offline`) and,
except FID, a bootstrap interval; a metric that does not apply is listed as not defined with the
reason, never dropped silently. Against a closed-world target (adapt/targets.py) it also says how much
of the way from the source to the known ideal the generator went (gap closed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from fsg_ray import storage
from fsg_ray.adapt.ema import rung_state
from fsg_ray.adapt.sampler import load_sampler, sampler_of
from fsg_ray.adapt.targets import IdealGenerator, closed_world, load_eval_set, load_target
from fsg_ray.data import toy
from fsg_ray.grids import image_grid, pair_grid, same_noise_pair, save_png, seeded_z, to_pil
from fsg_ray.metrics import (
    LpipsModel,
    build_extractor,
    build_lpips,
    build_stlpips,
    compute_fid_kid,
    correspondence_error,
    correspondence_ratio,
    fid_undefined,
    intra_cluster_lpips,
    lpips_unavailable,
)
from fsg_ray.metrics.features import seeded_latents
from fsg_ray.metrics.intervals import KidBootstrap, gap_closed, mean_replicates, pair_mean_replicates, percentile_interval, resample_counts
from fsg_ray.eval.report import Figure, render_report
from fsg_ray.eval.results import EvalError, EvalResult, EvalSettings
from fsg_ray.nets.checkpoints import read_checkpoint
from fsg_ray.nets.stylegan2 import Generator

# What --metrics selects; each yields keys named after its extractor (see README, "fsg eval"):
# fid -> fid | fid_offline; kid -> kid | kid_offline; intra_lpips -> intra_stlpips (+ intra_lpips);
# corr -> corr_l1, corr_stlpips (+ corr_lpips); corr_ratio -> corr_edge_ratio, corr_stlpips_ratio (+ corr_lpips_ratio).
METRIC_NAMES: tuple[str, ...] = ("fid", "kid", "intra_lpips", "corr", "corr_ratio", "gap")
GAP_OF = ("fid", "kid", "corr")  # the distances whose source-to-ideal gap "gap" measures (gap_fid, gap_kid, gap_corr_*)
IDEAL_GENERATOR = "ideal"  # as generator_uri: the closed-world target's own ideal, to see the best numbers reachable
GRID_SEEDS = list(range(8))
MEMBERS_SHOWN = 8  # cluster members shown per training image in the report


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


def target_transform(target: str) -> Callable[[Tensor], Tensor] | None:
    """The known source->target image map of a target: an image-space toy domain's, a closed-world target's, else None."""
    closed = closed_world(target)
    if closed is not None:
        return toy.image_transform(closed.transform)
    name = _toy_name(target)
    return toy.image_transform(name) if name is not None else None


def correspondence_undefined(target: str, source_uri: str | None) -> str | None:
    """Why the correspondence error cannot be measured for this request, or None when it can."""
    if target_transform(target) is None:
        spaces = ", ".join(f"toy:{n}" for n in toy.TOY_DOMAINS if toy.image_transform(n) is not None)
        return f"target {target} defines no transform(G_s(z)): only the image-space toy domains ({spaces}) and closed-world targets (closed:TRANSFORM) do"
    if source_uri is None and closed_world(target) is None:
        return "no source generator given (pass source_uri / --source)"
    return None


def correspondence_ratio_undefined(source_uri: str | None) -> str | None:
    """Why corr_ratio cannot be measured for this request, or None when it can (any target will do)."""
    return None if source_uri is not None else "no source generator given (pass source_uri / --source)"


def gap_undefined(target: str) -> str | None:
    """Why gap closed cannot be measured against `target`, or None for a closed-world target (its ideal is known)."""
    if closed_world(target) is not None:
        return None
    return f"target {target} is data-defined, so no ideal generator is known; gap closed needs a closed-world target (closed:TRANSFORM[@SOURCE])"


def evaluation_source(target: str, source_uri: str | None) -> str | None:
    """The source generator an evaluation compares with: the one given, else a closed-world target's own."""
    closed = closed_world(target)
    if closed is None:
        return source_uri
    if source_uri is not None and source_uri != closed.source:
        raise EvalError(f"source: {source_uri} is not the source of the closed-world target {target} ({closed.source}); pass that one or none")
    return closed.source


def _train_images_spec(train: str | None, target: str, ckpt: dict[str, Any]) -> str | None:
    """The few-shot set intra-LPIPS clusters around: given > toy or closed-world target's 10 shots > the run's recorded target."""
    if train is not None:
        return train
    if _toy_name(target) is not None or closed_world(target) is not None:
        return target
    return ckpt.get("target")


@torch.no_grad()
def _correspondence_figure(G_s: Generator, G_t: Generator, target: str, with_transform: bool) -> Figure:
    z = seeded_z(GRID_SEEDS, G_t.style_dim).to(next(G_t.parameters()).device)
    source, adapted = same_noise_pair(G_s, G_t, z)
    if not with_transform:
        caption = "Each adapted sample (lower row) under the source sample for the same z and the source's noise."
        return Figure("correspondence", "Source ↔ adapted", caption, pair_grid(source, adapted))
    expected = target_transform(target)(source)
    grid = to_pil(make_grid(torch.cat([source, expected, adapted]).cpu(), nrow=len(z), padding=2, pad_value=1.0))
    caption = f"Rows: source G_s(z); {target}'s transform of it (what perfect correspondence gives); adapted G_t(z). Same z and the source's noise per column."
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
    reasons = {
        "corr": correspondence_undefined(target, source_uri) if "corr" in requested else None,
        "corr_ratio": correspondence_ratio_undefined(source_uri) if "corr_ratio" in requested else None,
        "gap": gap_undefined(target) if "gap" in requested else None,
    }
    not_defined = {name: reason for name, reason in reasons.items() if reason is not None}
    if metrics is not None and not_defined:
        name, reason = next(iter(not_defined.items()))
        raise EvalError(f"metrics: {name} is not defined here: {reason}")
    if metrics is not None and "gap" in requested and not set(GAP_OF) & set(requested):
        raise EvalError(f"metrics: gap closes the distance that {', '.join(GAP_OF)} measure; name at least one of them too")
    return tuple(m for m in requested if m not in not_defined), not_defined


@dataclass
class _Findings:
    """What the metric steps of one evaluation collect, in the order they run."""

    settings: EvalSettings
    values: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    not_defined: dict[str, str] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def counts(self, n: int) -> np.ndarray:
        """The bootstrap's draws of n samples: the same for every metric over the same n, seeded by the evaluation's seed."""
        return resample_counts(n, self.settings.bootstrap_rounds, np.random.default_rng(self.settings.seed))

    def add(self, key: str, value: float, replicates: np.ndarray | None = None) -> None:
        self.values[key] = value
        if replicates is not None:
            self.intervals[key] = percentile_interval(replicates, self.settings.interval_level)

    def add_gap(self, key: str, source: float, value: float, ideal: float, replicates: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """gap_<key> from the metric's value for the source, the generator and the ideal (and their shared replicates)."""
        self.add(f"gap_{key}", float(gap_closed(source, value, ideal)), gap_closed(*replicates) if replicates is not None else None)
        self.details.setdefault("gap", {})[key] = {"source": source, "generator": value, "ideal": ideal}


@dataclass(frozen=True)
class _References:
    """A closed-world target's two fixed points: the unadapted source G_s and the ideal T∘G_s."""

    target: str
    source: nn.Module
    ideal: nn.Module


# Samples of the references depend only on the target and the settings, not on the generator under test:
# many evaluations against one target (a benchmark, every rung of a search) compute them once per process.
_REFERENCE_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, compute: Callable[[], Any]) -> Any:
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = compute()
    return _REFERENCE_CACHE[key]


def target_features(target: str, size: int, settings: EvalSettings, inception_path: str | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """FID/KID features [n_real, D] of `target`'s images at `size` px, by the extractor `settings` name.

    Extract once and pass to `evaluate(real_features=...)` (or `compute_fid_kid`) when many
    generators, or one generator every N steps, are compared with the same target.
    """
    extractor = build_extractor(inception_path, device, offline=settings.features == "offline")
    return extractor.features(load_eval_set(target, size, settings.n_real), settings.batch_size)


def _add_fid_kid(
    found: _Findings,
    G_t: Generator,
    target: str,
    requested: tuple[str, ...],
    explicit: bool,
    inception_path: str | None,
    device: torch.device,
    real_features: np.ndarray | None,
    references: _References | None,
) -> None:
    s = found.settings
    extractor = build_extractor(inception_path, device, offline=s.features == "offline")
    if real_features is not None and (real_features.ndim != 2 or real_features.shape[1] != extractor.dim):
        raise EvalError(f"real_features: expected [N, {extractor.dim}] features of {extractor.name}, got shape {real_features.shape}")
    real = real_features if real_features is not None else extractor.features(load_eval_set(target, G_t.config.size, s.n_real), s.batch_size)
    reason = fid_undefined(s.n_generated, len(real), extractor.dim) if "fid" in requested else None
    if reason is not None and explicit:
        raise EvalError(f"metrics: fid is not defined here: {reason}")
    wanted = tuple(m for m in ("fid", "kid") if m in requested)

    def measure(G: nn.Module) -> dict[str, Any]:
        return compute_fid_kid(G, real, s.n_generated, extractor, s.seed, s.batch_size, s.truncation, s.kid_subsets, s.kid_subset_size, wanted)

    fk = measure(G_t)
    keys = [k for k in fk if k.split("_")[0] in wanted and isinstance(fk[k], float)]
    bootstrap = KidBootstrap(real, s.n_generated, s.bootstrap_rounds, s.seed) if "kid" in wanted else None
    kid_replicates = bootstrap.replicates(fk["fake_features"]) if bootstrap is not None else None
    for key in keys:
        found.add(key, fk[key], kid_replicates if key.startswith("kid") else None)
    if references is not None:
        by = {}
        for which in ("source", "ideal"):
            ref_key = (references.target, which, "fid_kid", extractor.name, len(real), s.n_generated, s.seed, s.truncation, str(device), wanted)
            by[which] = _cached(ref_key, lambda G=getattr(references, which): measure(G))
        for key in keys:
            shared = (bootstrap.replicates(by["source"]["fake_features"]), kid_replicates, bootstrap.replicates(by["ideal"]["fake_features"]))
            found.add_gap(key, by["source"][key], fk[key], by["ideal"][key], shared if key.startswith("kid") else None)
    if reason is not None:
        found.not_defined["fid"] = reason
    found.extractors["features"] = extractor.name
    found.details["fid_kid"] = {"n_gen": fk["n_gen"], "n_real": fk["n_real"], "feature_dim": extractor.dim}


def _add_intra_lpips(found: _Findings, G_t: Generator, train_spec: str, models: list[LpipsModel]) -> None:
    train_images = load_target(train_spec, G_t.config.size)
    s = found.settings
    for model in models:
        il = intra_cluster_lpips(G_t, train_images, s.n_lpips, s.max_per_cluster, s.seed, s.batch_size, s.truncation, model)
        key = f"intra_{model.key}"
        per_cluster = np.stack([pair_mean_replicates(pairwise, found.counts(len(pairwise))) for pairwise in il["pairwise"]])
        found.add(key, il[key], np.nanmean(per_cluster, axis=0))
        found.details[key] = {"cluster_sizes": il["cluster_sizes"], "per_cluster": il["per_cluster"]}
        if model is models[0]:
            found.figures.append(_cluster_figure(G_t, train_images, il, s))


def _add_corr(found: _Findings, G_s: Generator, G_t: Generator, target: str, models: list[LpipsModel], gap: bool) -> None:
    """Paired distance of G_t(z) to transform(G_s(z)); with `gap`, also the share of the source's own distance it closes (the ideal's is 0)."""
    s = found.settings
    transform = target_transform(target)
    counts = found.counts(s.n_corr)
    for model in models:

        def paired(G: nn.Module) -> dict[str, Any]:
            return correspondence_error(G_s, G, transform, s.n_corr, s.seed, s.batch_size, s.truncation, model)

        ce = paired(G_t)
        source = _cached((target, "source", "corr", model.name, s.n_corr, s.seed, s.truncation), lambda: paired(G_s)) if gap else None
        for key in ("corr_l1", f"corr_{model.key}"):
            replicates = mean_replicates(ce["per_sample"][key], counts)
            found.add(key, ce[key], replicates)
            if source is not None:
                found.add_gap(key, source[key], ce[key], 0.0, (mean_replicates(source["per_sample"][key], counts), replicates, np.zeros_like(replicates)))


def _add_corr_ratio(found: _Findings, G_s: Generator, G_t: Generator, models: list[LpipsModel]) -> None:
    s = found.settings
    counts = found.counts(s.n_corr)
    for model in models:
        cr = correspondence_ratio(G_s, G_t, s.n_corr, s.seed, s.batch_size, s.truncation, model)
        for what in ("edge", model.key):
            key = f"corr_{what}_ratio"
            if not math.isfinite(cr[key]):
                found.not_defined[key] = "G_t(z) equals G_s(z) for every z (the generator is its source): matched distance 0, the ratio is infinite"
                continue
            per_sample = cr["per_sample"]
            found.add(key, cr[key], mean_replicates(per_sample[f"{what}_shuffled"], counts) / mean_replicates(per_sample[f"{what}_matched"], counts))
        found.details.setdefault("corr_ratio", {}).update({k: v for k, v in cr.items() if k.endswith(("_matched", "_shuffled"))})


def _perceptual_models(requested: tuple[str, ...], device: torch.device) -> tuple[list[LpipsModel], dict[str, str]]:
    """ST-LPIPS always; vanilla LPIPS too when its backbone is on this machine, else why its keys are missing."""
    if not {"intra_lpips", "corr", "corr_ratio"} & set(requested):
        return [], {}
    models = [build_stlpips(device=device)]
    reason = lpips_unavailable()
    if reason is None:
        return models + [build_lpips(device=device)], {}
    keys = {"intra_lpips": "intra_lpips", "corr": "corr_lpips", "corr_ratio": "corr_lpips_ratio"}
    return models, {keys[m]: f"{reason}; see the stlpips keys" for m in requested if m in keys}


@torch.no_grad()
def _samples_figure(G_t: Generator) -> Figure:
    z = seeded_z(GRID_SEEDS, G_t.style_dim).to(next(G_t.parameters()).device)
    return Figure("samples", "Samples", f"Samples for seeds {GRID_SEEDS[0]}-{GRID_SEEDS[-1]}, truncation 1.", image_grid(G_t(z, noise="const").clamp(-1, 1).cpu()))


def _load_generator(generator_uri: str, target: str, device: torch.device, rung_of: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The sampler under evaluation and its checkpoint; IDEAL_GENERATOR is a closed-world target's T∘G_s.
    With `rung_of` (the run's source), an intermediate checkpoint's G_ema without that source's share (adapt/ema.py)."""
    if generator_uri != IDEAL_GENERATOR:
        if rung_of is None:
            return load_sampler(generator_uri, device)
        ckpt = rung_state(read_checkpoint(generator_uri), rung_of)
        return sampler_of(ckpt, device), ckpt
    closed = closed_world(target)
    if closed is None:
        raise EvalError(f"generator: {IDEAL_GENERATOR!r} is a closed-world target's ideal T∘G_s, and target {target} is data-defined")
    return closed.ideal(device), {}


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
    real_features: np.ndarray | None = None,
    rung: bool = False,
) -> EvalResult:
    """Evaluate the EMA generator at `generator_uri` against `target` (folder, .zip, .parquet, toy:NAME or closed:TRANSFORM).

    `metrics=None` computes every metric that is defined here and lists the others under
    `not_defined`, with the reason (FID from too few samples, corr for a target without a known
    transform, corr/corr_ratio without a source, gap for a data-defined target, vanilla LPIPS without
    its backbone); naming a metric that cannot be computed raises EvalError. A closed-world target
    brings its own source (`source_uri` may be left out) and its ideal generator: "gap" then adds
    gap_<metric> for KID/FID and the paired distances, 0 for the source and 1 for the ideal, each
    measured by this same protocol. Every KID, paired distance, ratio, diversity and gap carries a
    bootstrap interval (`intervals`; FID none). `train` is the few-shot set intra-LPIPS clusters around
    (default: a toy or closed-world target's 10 shots, else the target recorded in the generator's
    checkpoint). `real_features` are the target's images already through `target_features` (the same
    extractor and settings), for evaluating many generators against one target. `rung`: the checkpoint is a
    search rung; before its run's last step, its G_ema is measured without the share of the source it
    started from (adapt/ema.py; needs the source). With `out`, writes
    `metrics.json`, `report.html` and the report's grids as PNGs there (local or s3://).
    """
    source_uri = evaluation_source(target, source_uri)
    requested, not_defined = plan_metrics(metrics, target, source_uri)
    started = time.perf_counter()
    torch_device = torch.device(device)
    if rung and source_uri is None:
        raise EvalError(f"rung: evaluating {generator_uri} as a search rung needs the run's source generator; pass source_uri")
    G_t, ckpt = _load_generator(generator_uri, target, torch_device, source_uri if rung else None)
    G_s = None
    if source_uri is not None:
        G_s = closed_world(target).load_source(torch_device) if closed_world(target) is not None else load_sampler(source_uri, torch_device)[0]
        if (G_s.config.size, G_s.style_dim) != (G_t.config.size, G_t.style_dim):
            raise EvalError(
                f"source {source_uri} makes {G_s.config.size}px images from {G_s.style_dim}-d z, "
                f"generator {generator_uri} {G_t.config.size}px from {G_t.style_dim}-d z"
            )
    train_spec = _train_images_spec(train, target, ckpt) if "intra_lpips" in requested else None
    if "intra_lpips" in requested and train_spec is None:
        raise EvalError(f"intra_lpips: {generator_uri} records no training images and target {target} is not toy:NAME or closed:TRANSFORM; pass train= / --train")
    references = _References(target, G_s, IdealGenerator(G_s, closed_world(target).transform)) if "gap" in requested else None

    found = _Findings(settings, not_defined=dict(not_defined))
    models, lpips_not_defined = _perceptual_models(requested, torch_device)
    found.not_defined.update(lpips_not_defined)
    for model in models:
        found.extractors[model.key] = model.name
    if {"fid", "kid"} & set(requested):
        _add_fid_kid(found, G_t, target, requested, metrics is not None, inception_path, torch_device, real_features, references)
    if "intra_lpips" in requested:
        _add_intra_lpips(found, G_t, train_spec, models)
    if "corr" in requested:
        _add_corr(found, G_s, G_t, target, models, gap=references is not None)
    if "corr_ratio" in requested:
        _add_corr_ratio(found, G_s, G_t, models)
    first = _correspondence_figure(G_s, G_t, target, with_transform="corr" in requested) if G_s is not None else _samples_figure(G_t)

    elapsed = time.perf_counter() - started
    result = EvalResult(generator_uri, target, source_uri, train_spec, found.values, found.intervals, found.not_defined, found.extractors, settings, found.details, elapsed)
    if out is not None:
        write_outputs(result, [first, *found.figures], out)
    return result


def write_outputs(result: EvalResult, figures: Sequence[Figure], out: str) -> None:
    """metrics.json, the self-contained report.html and each figure as `<slug>.png` under `out` (local or s3://)."""
    storage.write_bytes(storage.join(out, "metrics.json"), json.dumps(result.to_json(), indent=2).encode())
    storage.write_bytes(storage.join(out, "report.html"), render_report(result, figures).encode())
    for figure in figures:
        save_png(storage.join(out, f"{figure.slug}.png"), figure.image)


