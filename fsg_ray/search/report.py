"""What a person reads after `fsg tune`: results.parquet, best.yaml, the best generator, search.png, report.html.

Everything is derived from the results table, so `fsg tune --report RUN_URI` renders the figure and
the page again from `RUN_URI/results.parquet` alone (the search's metric and parameters travel in the
file's metadata).
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a cluster node; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from fsg_ray import storage  # noqa: E402
from fsg_ray.adapt.run import EXPORT_FILE  # noqa: E402
from fsg_ray.config import config_to_dict  # noqa: E402
from fsg_ray.nets.checkpoints import CHECKPOINT_FILE, checkpoint_dir_name  # noqa: E402
from fsg_ray.eval.report import STYLE, png_data_uri  # noqa: E402
from fsg_ray.search.config import SearchConfig  # noqa: E402

RESULTS_FILE = "results.parquet"
BEST_YAML = "best.yaml"
BEST_DIR = "best"  # the best trial's generator.pt and final checkpoint
METADATA_KEY = b"fsg_tune"
LEGEND_TRIALS = 12  # beyond this a legend hides the curves


@dataclass(frozen=True)
class SearchMeta:
    """What the results table alone does not say: the search's name, metric, and its parameters' scales."""

    name: str
    metric: str  # the reported key, e.g. kid_offline
    mode: str
    params: dict[str, str]  # path -> "log", "linear" or "categorical"


@dataclass(frozen=True)
class SearchSummary:
    run_uri: str
    metric: str
    trials: int
    statuses: dict[str, int]
    best_trial: str | None
    best_value: float | None
    best_params: dict[str, Any]


def plain_value(value: Any) -> Any:
    """numpy scalars from the table as plain Python values (the config schema checks exact types)."""
    return value.item() if hasattr(value, "item") else value


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each trial's last report."""
    return frame.sort_values("step").groupby("trial_id", sort=True).tail(1).set_index("trial_id").sort_index()


def best_trial(frame: pd.DataFrame, meta: SearchMeta) -> pd.Series | None:
    """The completed trial with the best metric at its last report (stopped trials ended at fewer steps)."""
    done = final_rows(frame)
    done = done[(done["status"] == "completed") & done[meta.metric].notna()]
    if done.empty:
        return None
    return done.loc[done[meta.metric].idxmin() if meta.mode == "min" else done[meta.metric].idxmax()]


def best_per_value(frame: pd.DataFrame, meta: SearchMeta, path: str) -> pd.DataFrame:
    """For each value of a categorical parameter (e.g. the method), its best trial by the metric at the trial's
    last report, whether completed or stopped early (`step` and `status` say which), best value first."""
    finals = final_rows(frame)
    finals = finals[finals[meta.metric].notna()]
    ranked = finals.sort_values(meta.metric, ascending=meta.mode == "min")
    best = ranked.groupby(ranked[path].astype(str), sort=False).head(1)
    return best.reset_index()


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    return "-" if pd.isna(low) or pd.isna(high) else f"[{low:.5g}, {high:.5g}]"


def write_results(frame: pd.DataFrame, meta: SearchMeta, run_uri: str) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: json.dumps(meta.__dict__).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(run_uri, RESULTS_FILE), buffer.getvalue())


def read_results(run_uri: str) -> tuple[pd.DataFrame, SearchMeta]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(run_uri, RESULTS_FILE))))
    meta = SearchMeta(**json.loads(table.schema.metadata[METADATA_KEY]))
    return table.to_pandas(), meta


def best_yaml(search: SearchConfig, best: pd.Series, meta: SearchMeta, run_uri: str) -> str:
    """The best trial's complete AdaptConfig, runnable with `fsg adapt --config best.yaml`."""
    params = {path: plain_value(best[path]) for path in meta.params}
    config = search.trial_config(params)
    header = [
        f"# Best trial of the search {meta.name!r} ({run_uri}): {best.name}, {meta.metric} = {best[meta.metric]:.6g} at step {int(best['step'])} ({meta.mode} is better)",
        f"# Searched: {', '.join(f'{k}={v!r}' for k, v in params.items())}",
        f"# Rerun: fsg adapt --config best.yaml --source {search.source} --target {search.target} --out RUN_URI",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(config_to_dict(config), sort_keys=False)


def copy_best_generator(best: pd.Series, run_uri: str) -> None:
    """RUN_URI/best/generator.pt (the field's format) and the final checkpoint (all a MineGAN sampler needs)."""
    trial = best["checkpoint"].rsplit("/", 2)[0]
    storage.write_bytes(storage.join(run_uri, BEST_DIR, EXPORT_FILE), storage.read_bytes(storage.join(trial, EXPORT_FILE)))
    name = checkpoint_dir_name(int(best["step"]))
    storage.write_bytes(storage.join(run_uri, BEST_DIR, name, CHECKPOINT_FILE), storage.read_bytes(best["checkpoint"]))


def _positions(values: pd.Series, scale: str) -> tuple[pd.Series, list[str] | None]:
    if scale != "categorical":
        return values.astype(float), None
    labels = sorted({str(v) for v in values})
    return values.map(lambda v: labels.index(str(v))), labels


def search_figure(frame: pd.DataFrame, meta: SearchMeta) -> Image.Image:
    """The metric against step for every trial, and the metric against each searched parameter."""
    finals = final_rows(frame)
    best = best_trial(frame, meta)
    columns = min(3, 1 + len(meta.params))
    rows = -(-(1 + len(meta.params)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    panels = list(axes.flat)
    for unused in panels[1 + len(meta.params):]:
        unused.set_visible(False)
    curve = panels[0]
    for trial_id, rows in frame.sort_values("step").groupby("trial_id"):
        status = rows["status"].iloc[-1]
        is_best = best is not None and trial_id == best.name
        style = {"completed": "-", "stopped_early": "--", "error": ":"}.get(status, "-")
        line = curve.plot(rows["step"], rows[meta.metric], style, marker="o", markersize=3, linewidth=2.5 if is_best else 1, label=f"{trial_id}{' (best)' if is_best else ''}")
        if status == "stopped_early":
            curve.plot(rows["step"].iloc[-1], rows[meta.metric].iloc[-1], "x", color=line[0].get_color(), markersize=9)
    curve.set(xlabel="step", ylabel=meta.metric, title=f"{meta.metric} per trial (dashed, x: stopped early)")
    if frame["trial_id"].nunique() <= LEGEND_TRIALS:
        curve.legend(fontsize=6)
    for ax, (path, scale) in zip(panels[1:], meta.params.items()):
        x, labels = _positions(finals[path], scale)
        completed = finals["status"] == "completed"
        ax.scatter(x[completed], finals.loc[completed, meta.metric], label="completed")
        ax.scatter(x[~completed], finals.loc[~completed, meta.metric], facecolors="none", edgecolors="grey", label="stopped early / error (last report)")
        if best is not None:
            bx, _ = _positions(pd.Series([best[path]]), scale) if labels is None else (pd.Series([labels.index(str(best[path]))]), None)
            ax.scatter(bx, [best[meta.metric]], marker="*", s=200, color="gold", edgecolors="black", label="best")
        if scale == "log":
            ax.set_xscale("log")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set(xlabel=path, ylabel=f"{meta.metric} at the last report", title=f"{meta.metric} against {path}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _extractors(frame: pd.DataFrame) -> str:
    columns = [c for c in frame.columns if c.startswith("extractor_")]
    names = sorted({f"{c.removeprefix('extractor_')}: {v}" for c in columns for v in frame[c].dropna().unique()})
    offline = any("offline:" in n for n in names)
    note = " Offline extractors were used: these numbers are comparable only with numbers from the same extractor, never with published FID/KID." if offline else ""
    return f"Validation metrics were computed with {', '.join(names) or 'no extractor'}.{note}"


def _best_per_value_html(frame: pd.DataFrame, meta: SearchMeta, path: str) -> str:
    head = [path, "best trial", "status", "last step", meta.metric, "95% interval"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (row[path], row["trial_id"], row["status"], int(row["step"]), f"{row[meta.metric]:.5g}", _interval(row, meta.metric))) + "</tr>"
        for _, row in best_per_value(frame, meta, path).iterrows()
    )
    return f"<h2>Best per {html.escape(path)}</h2><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{rows}</table>"


def render_html(frame: pd.DataFrame, meta: SearchMeta, figure: Image.Image, run_uri: str, best_config: str | None) -> str:
    finals = final_rows(frame)
    best = best_trial(frame, meta)
    head = ["trial", "status", *meta.params, "last step", meta.metric, "95% interval", "checkpoint"]
    rows = []
    for trial_id, row in finals.iterrows():
        cells = [trial_id, row["status"], *(row[p] for p in meta.params), int(row["step"]), f"{row[meta.metric]:.5g}", _interval(row, meta.metric), row["checkpoint"]]
        mark = " style='font-weight:bold'" if best is not None and trial_id == best.name else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    per_value = "".join(_best_per_value_html(frame, meta, path) for path, scale in meta.params.items() if scale == "categorical")
    counts = finals["status"].value_counts().to_dict()
    summary = f"{len(finals)} trials: " + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
    if best is not None:
        summary += f". Best: {best.name}, {meta.metric} = {best[meta.metric]:.5g} ({meta.mode} is better); generator at {storage.join(run_uri, BEST_DIR, EXPORT_FILE)}"
    config = f"<h2>best.yaml</h2><pre>{html.escape(best_config)}</pre>" if best_config else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>fsg tune: {html.escape(meta.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Search {html.escape(meta.name)}</h1><p>{html.escape(run_uri)}</p><p>{html.escape(summary)}</p>"
        f"<p class=offline>{html.escape(_extractors(frame))}</p>"
        f"<figure><img src='{png_data_uri(figure)}' alt='search'><figcaption>Left: {html.escape(meta.metric)} at each report of every trial "
        f"(dashed and x: stopped early by the scheduler). Right: {html.escape(meta.metric)} at each trial's last report against each searched parameter.</figcaption></figure>"
        f"{per_value}<h2>Trials</h2><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>{config}</body></html>"
    )


def render(run_uri: str, frame: pd.DataFrame, meta: SearchMeta) -> None:
    """search.png and report.html from the results table."""
    figure = search_figure(frame, meta)
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    storage.write_bytes(storage.join(run_uri, "search.png"), buffer.getvalue())
    best_uri = storage.join(run_uri, BEST_YAML)
    best_config = storage.read_bytes(best_uri).decode() if storage.exists(best_uri) else None
    storage.write_bytes(storage.join(run_uri, "report.html"), render_html(frame, meta, figure, run_uri, best_config).encode())


def search_meta(search: SearchConfig, metric: str) -> SearchMeta:
    scales = {path: "categorical" if space.space in ("choice", "grid_search") and not all(isinstance(v, (int, float)) for v in space.values)
              else "log" if space.space == "loguniform" else "linear" for path, space in search.search.items()}
    return SearchMeta(search.name, metric, search.metric.mode, scales)


def write_search_outputs(frame: pd.DataFrame, search: SearchConfig, meta: SearchMeta, run_uri: str) -> SearchSummary:
    """results.parquet, best.yaml, best/generator.pt, search.png and report.html under `run_uri`."""
    metric = meta.metric
    write_results(frame, meta, run_uri)
    best = best_trial(frame, meta)
    if best is not None:
        storage.write_bytes(storage.join(run_uri, BEST_YAML), best_yaml(search, best, meta, run_uri).encode())
        copy_best_generator(best, run_uri)
    render(run_uri, frame, meta)
    statuses = final_rows(frame)["status"].value_counts().to_dict()
    params = {path: plain_value(best[path]) for path in meta.params} if best is not None else {}
    value = float(best[metric]) if best is not None else None
    return SearchSummary(run_uri, metric, sum(statuses.values()), statuses, None if best is None else str(best.name), value, params)


def rerender(run_uri: str) -> SearchMeta:
    """`fsg tune --report RUN_URI`: search.png and report.html again from results.parquet."""
    frame, meta = read_results(run_uri)
    render(run_uri, frame, meta)
    return meta
