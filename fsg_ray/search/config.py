"""The `fsg tune` search format: a strict YAML schema, checked whole before Ray starts.

A search file names a base run (source, target, any AdaptConfig field), the AdaptConfig paths to
search (the paths `--set` takes), the metric, searcher, scheduler, trial resources and in-loop
evaluation. Every mistake is a ConfigError that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fsg_ray.adapt.methods import make_method
from fsg_ray.config import AdaptConfig, ConfigError, apply_overrides, config_from_dict, config_to_dict
from fsg_ray.adapt.targets import closed_world
from fsg_ray.eval.protocol import METRIC_NAMES, correspondence_undefined, gap_undefined
from fsg_ray.eval.results import FEATURES
from fsg_ray.metrics.features import INCEPTION_DIM, OFFLINE_WIDTHS
from fsg_ray.metrics.fid import fid_undefined

TOP_KEYS = ("name", "base", "metric", "search", "searcher", "scheduler", "num_samples", "max_concurrent_trials", "trial", "eval")
REQUIRED_KEYS = ("name", "base", "metric", "search", "eval")
SCHEDULERS = ("asha", "sha", "none")
SPACE_KEYS = {
    "uniform": ("lower", "upper"),
    "loguniform": ("lower", "upper"),
    "quniform": ("lower", "upper", "q"),
    "randint": ("lower", "upper"),
    "choice": ("values",),
    "grid_search": ("values",),
}
# A searched metric name -> the evaluation metrics (fsg eval --metrics) that produce it.
SEARCHABLE_METRICS = {
    "fid": ("fid",),
    "kid": ("kid",),
    "intra_stlpips": ("intra_lpips",),
    "corr_l1": ("corr",),
    "corr_stlpips": ("corr",),
    "corr_edge_ratio": ("corr_ratio",),
    "corr_stlpips_ratio": ("corr_ratio",),
    "gap_fid": ("fid", "gap"),
    "gap_kid": ("kid", "gap"),
    "gap_corr_l1": ("corr", "gap"),
    "gap_corr_stlpips": ("corr", "gap"),
}
# A trial checkpoints exactly where it evaluates, so that ASHA's reports carry checkpoints.
RESERVED_PATHS = {"checkpoint_every": "a trial checkpoints every eval.every steps; set eval.every"}


@dataclass(frozen=True)
class Space:
    """One searched AdaptConfig field. randint's upper bound is exclusive (Tune's convention)."""

    space: str
    lower: float | None = None
    upper: float | None = None
    q: float | None = None
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    mode: str


@dataclass(frozen=True)
class SearcherSpec:
    type: str = "random"


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping over reports counted in training steps: `asha` (Ray's asynchronous successive halving),
    `sha` (synchronous: every trial reaches a rung before any is judged, fsg_ray.ray.halving) or `none`.
    grace_period defaults to eval.every, max_t to steps."""

    type: str = "asha"
    time_attr: str = "step"
    grace_period: int | None = None
    reduction_factor: float = 2.0
    max_t: int | None = None


@dataclass(frozen=True)
class TrialSpec:
    """Ray Train resources of one trial (fsg_ray.ray.train.Scaling)."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 2


@dataclass(frozen=True)
class EvalSpec:
    """In-loop evaluation: every `every` steps, `n_generated` samples of G_ema against `validation`."""

    every: int
    n_generated: int = 256
    validation: str | None = None  # default: a toy:NAME target's held-out images
    metrics: tuple[str, ...] = ("kid",)
    features: str = "inception"  # FID/KID features: the FID Inception, or "offline" (fast, reported as kid_offline)


@dataclass(frozen=True)
class SearchConfig:
    name: str
    source: str
    target: str
    base: AdaptConfig
    metric: MetricSpec
    search: dict[str, Space]
    eval: EvalSpec
    searcher: SearcherSpec = SearcherSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    num_samples: int = 1
    max_concurrent_trials: int = 1
    trial: TrialSpec = TrialSpec()

    @property
    def validation(self) -> str:
        return self.eval.validation or self.target

    @property
    def num_trials(self) -> int:
        """Trials the search runs: num_samples for every combination of the grid_search values."""
        return self.num_samples * math.prod(len(s.values) for s in self.search.values() if s.space == "grid_search")

    def trial_config(self, params: dict[str, Any]) -> AdaptConfig:
        """The complete AdaptConfig of a trial: base, then the sampled values, checkpointing at eval.every."""
        data = config_to_dict(self.base)
        for path, value in {**params, "checkpoint_every": self.eval.every}.items():
            data = with_value(data, path, value)
        return config_from_dict(AdaptConfig, data)

    def to_plain(self) -> dict[str, Any]:
        """Plain data that round-trips through YAML: what a resumed search is compared against."""
        return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(self))))


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of nested plain data with the dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    return {**data, head: with_value(data.get(head) or {}, rest, value) if rest else value}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first difference between two plain-data trees, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else (prefix.rstrip("."), old, new)


def leaf_paths(cls: type = AdaptConfig, prefix: str = "") -> list[str]:
    """Every dotted AdaptConfig field that holds a value (what `--set` and `search` accept)."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def _set_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in data.items():
        paths |= _set_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return paths


def _section(cls: type, data: Any, key: str) -> Any:
    return config_from_dict(cls, {} if data is None else data, f"{key}.")


def _parse_space(path: str, raw: Any, base: dict[str, Any]) -> Space:
    key = f"search.{path}"
    if not isinstance(raw, dict) or "space" not in raw:
        raise ConfigError(f"{key}: expected a mapping with 'space' ({', '.join(SPACE_KEYS)}), got {raw!r}")
    kind = raw["space"]
    if kind not in SPACE_KEYS:
        raise ConfigError(f"{key}.space: unknown space {kind!r}; valid: {', '.join(SPACE_KEYS)}")
    allowed = SPACE_KEYS[kind]
    for name in raw:
        if name != "space" and name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key for space {kind}; valid keys: space, {', '.join(allowed)}")
    for name in allowed:
        if name not in raw:
            raise ConfigError(f"{key}.{name}: missing; space {kind} needs {', '.join(allowed)}")
    if "values" in allowed:
        values = raw["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}.values: expected a non-empty list, got {values!r}")
        space = Space(kind, values=tuple(values))
        candidates = list(values)
    else:
        for name in allowed:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key}.{name}: expected a number, got {value!r}")
        lower, upper = raw["lower"], raw["upper"]
        if lower >= upper:
            raise ConfigError(f"{key}: lower ({lower}) must be below upper ({upper})")
        if kind == "loguniform" and lower <= 0:
            raise ConfigError(f"{key}.lower: loguniform bounds must be positive, got {lower}")
        if kind == "quniform" and raw["q"] <= 0:
            raise ConfigError(f"{key}.q: expected a positive step, got {raw['q']}")
        if kind == "randint" and not (isinstance(lower, int) and isinstance(upper, int)):
            raise ConfigError(f"{key}: randint bounds must be integers, got {lower!r} and {upper!r}")
        space = Space(kind, lower=lower, upper=upper, q=raw.get("q"))
        # Tune draws floats for every space but randint (whose upper bound is exclusive).
        candidates = [lower, upper - 1] if kind == "randint" else [float(lower), float(upper)]
    for value in candidates:
        try:
            make_method(config_from_dict(AdaptConfig, with_value(base, path, value)))
        except ConfigError as exc:
            raise ConfigError(f"{key}: the value {value!r} does not fit ({exc})") from exc
    return space


def _parse_search(raw: Any, base_data: dict[str, Any]) -> dict[str, Space]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"search: expected a non-empty mapping of AdaptConfig paths, got {raw!r}")
    valid, in_base = set(leaf_paths()), _set_paths(base_data)
    spaces = {}
    for path, space in raw.items():
        if path in RESERVED_PATHS:
            raise ConfigError(f"search.{path}: cannot be searched: {RESERVED_PATHS[path]}")
        if path not in valid:
            section = path.rpartition(".")[0]
            near = [p for p in sorted(valid) if p.startswith(f"{section}.")] if section else sorted(valid)
            raise ConfigError(f"search.{path}: not an AdaptConfig field; valid here: {', '.join(near or sorted(valid))}")
        if path in in_base:
            raise ConfigError(f"search.{path}: also set in base; a searched field takes its values from the search only")
        spaces[path] = _parse_space(path, space, base_data)
    return spaces


def _parse_base(raw: Any) -> tuple[str, str, AdaptConfig, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"base: expected a mapping with source, target and AdaptConfig fields, got {raw!r}")
    data = dict(raw)
    paths = []
    for key in ("source", "target"):
        value = data.pop(key, None)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"base.{key}: expected a URI or toy:NAME, got {value!r}")
        paths.append(value)
    for key in RESERVED_PATHS:
        if key in data:
            raise ConfigError(f"base.{key}: {RESERVED_PATHS[key]}")
    config = config_from_dict(AdaptConfig, data, "base.")
    try:
        make_method(config)
    except ConfigError as exc:
        raise ConfigError(f"base.{exc}") from None
    return paths[0], paths[1], config, data


def _parse_eval(raw: Any, source: str, target: str, steps: int) -> EvalSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"eval: expected a mapping with every, n_generated, validation, metrics, got {raw!r}")
    data = dict(raw)
    metrics = data.pop("metrics", list(EvalSpec.metrics))
    if not isinstance(metrics, list) or not metrics:
        raise ConfigError(f"eval.metrics: expected a non-empty list of {', '.join(METRIC_NAMES)}, got {metrics!r}")
    for name in metrics:
        if name not in METRIC_NAMES:
            raise ConfigError(f"eval.metrics: unknown metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    if "every" not in data:
        raise ConfigError("eval.every: missing; how many steps between evaluations (and checkpoints)")
    spec = dataclasses.replace(config_from_dict(EvalSpec, data, "eval."), metrics=tuple(metrics))
    if not 1 <= spec.every <= steps:
        raise ConfigError(f"eval.every: expected 1..base.steps ({steps}), got {spec.every}")
    if spec.n_generated < 2:
        raise ConfigError(f"eval.n_generated: FID/KID need at least 2 images, got {spec.n_generated}")
    if spec.features not in FEATURES:
        raise ConfigError(f"eval.features: expected one of {', '.join(FEATURES)}, got {spec.features!r}")
    dim = INCEPTION_DIM if spec.features == "inception" else sum(OFFLINE_WIDTHS)
    if "fid" in spec.metrics and (reason := fid_undefined(spec.n_generated, spec.n_generated, dim)):
        raise ConfigError(f"eval.metrics: fid with eval.n_generated={spec.n_generated}: {reason}")
    validation = spec.validation or target
    if spec.validation is None and not target.startswith("toy:") and closed_world(target) is None:
        raise ConfigError(f"eval.validation: required when base.target ({target}) is not toy:NAME or closed:TRANSFORM; the few shots cannot be their own validation set")
    closed = closed_world(validation)
    if closed is not None and closed.source != source:
        raise ConfigError(f"eval.validation: {validation} is made from {closed.source}, base.source is {source}; a closed-world target measures adaptations of its own source")
    reasons = {"corr": correspondence_undefined(validation, source), "gap": gap_undefined(validation)}
    for name in spec.metrics:
        if reasons.get(name) is not None:
            raise ConfigError(f"eval.metrics: {name} is not defined here: {reasons[name]}")
    return spec


def _parse_scheduler(raw: Any, every: int, steps: int) -> SchedulerSpec:
    spec = _section(SchedulerSpec, raw, "scheduler")
    if spec.type not in SCHEDULERS:
        raise ConfigError(f"scheduler.type: expected one of {', '.join(SCHEDULERS)}, got {spec.type!r}")
    if spec.time_attr != "step":
        raise ConfigError(f"scheduler.time_attr: only 'step' (training steps) is reported, got {spec.time_attr!r}")
    spec = dataclasses.replace(spec, grace_period=spec.grace_period or every, max_t=spec.max_t or steps)
    if spec.grace_period < 1 or spec.max_t > steps or spec.grace_period > spec.max_t:
        raise ConfigError(f"scheduler: need 1 <= grace_period ({spec.grace_period}) <= max_t ({spec.max_t}) <= base.steps ({steps})")
    if spec.reduction_factor <= 1:
        raise ConfigError(f"scheduler.reduction_factor: expected a number above 1, got {spec.reduction_factor}")
    if spec.type == "sha":
        if spec.reduction_factor != int(spec.reduction_factor):
            raise ConfigError(f"scheduler.reduction_factor: sha keeps 1/factor of the trials at each rung, so it needs a whole number, got {spec.reduction_factor}")
        if spec.grace_period % every:
            # Rungs are grace_period * factor^k: with the first one on a report step, all are.
            raise ConfigError(f"scheduler.grace_period: sha judges every trial at the same steps, so its rungs must be report steps; {spec.grace_period} is not a multiple of eval.every ({every})")
    return spec


def _parse_trial(raw: Any) -> TrialSpec:
    spec = _section(TrialSpec, raw, "trial")
    for key in ("workers", "cpus_per_worker"):
        if getattr(spec, key) <= 0:
            raise ConfigError(f"trial.{key}: expected a positive number, got {getattr(spec, key)}")
    if spec.gpus_per_worker < 0 or spec.max_failures < 0:
        raise ConfigError(f"trial: gpus_per_worker and max_failures must be non-negative, got {spec.gpus_per_worker} and {spec.max_failures}")
    return spec


def parse_search(data: Any) -> SearchConfig:
    """A SearchConfig from plain YAML data; raises ConfigError naming the key (without the file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{key}: unknown key; valid keys: {', '.join(TOP_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"{key}: missing (required: {', '.join(REQUIRED_KEYS)})")
    if not isinstance(data["name"], str) or not data["name"]:
        raise ConfigError(f"name: expected a non-empty string, got {data['name']!r}")
    source, target, base, base_data = _parse_base(data["base"])
    search = _parse_search(data["search"], base_data)
    eval_spec = _parse_eval(data["eval"], source, target, base.steps)
    metric = _section(MetricSpec, data["metric"], "metric")
    if metric.name not in SEARCHABLE_METRICS:
        raise ConfigError(f"metric.name: expected one of {', '.join(SEARCHABLE_METRICS)}, got {metric.name!r}")
    if metric.mode not in ("min", "max"):
        raise ConfigError(f"metric.mode: expected min or max, got {metric.mode!r}")
    missing = [name for name in SEARCHABLE_METRICS[metric.name] if name not in eval_spec.metrics]
    if missing:
        raise ConfigError(f"metric.name: {metric.name} needs {' and '.join(map(repr, missing))} in eval.metrics ({', '.join(eval_spec.metrics)})")
    searcher = _section(SearcherSpec, data.get("searcher"), "searcher")
    if searcher.type not in ("random", "optuna"):
        raise ConfigError(f"searcher.type: expected random or optuna, got {searcher.type!r}")
    scheduler = _parse_scheduler(data.get("scheduler"), eval_spec.every, base.steps)
    if scheduler.type == "sha" and searcher.type != "random":
        raise ConfigError(f"searcher.type: sha draws every trial's configuration before the first rung, which leaves {searcher.type} nothing to learn from; use random")
    if searcher.type == "optuna":
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("searcher.type: optuna is an optional extra that is not installed here: pip install 'fsg-ray[optuna]'")
        for path, space in search.items():
            if space.space == "grid_search":
                raise ConfigError(f"search.{path}: grid_search cannot be used with searcher.type optuna (use choice)")
    counts = {key: data.get(key, 1) for key in ("num_samples", "max_concurrent_trials")}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return SearchConfig(
        name=data["name"], source=source, target=target, base=base, metric=metric, search=search, eval=eval_spec,
        searcher=searcher, scheduler=scheduler,
        num_samples=counts["num_samples"], max_concurrent_trials=counts["max_concurrent_trials"], trial=_parse_trial(data.get("trial")),
    )


def load_search_config(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    """Read, override (`key=value` on the file's own keys, e.g. base.steps=100) and check a search file.

    Every error names the file and the key: `tune_configs/x.yaml: search.cdc.weight.lower: ...`.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read search config ({exc})") from exc
    try:
        return parse_search(apply_overrides(data, overrides or []) if isinstance(data, dict) else data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
