"""The evaluation report as one self-contained HTML file: metric table, extractor notice, embedded PNG grids.

Self-contained (images as base64 data URIs, inline CSS) so it can be mailed, attached to a ticket or
served straight from S3 without the files next to it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image

from fsg_ray.eval.results import EvalResult

METRIC_MEANINGS = {
    "fid": "Fréchet distance of generated vs target features (lower is better)",
    "kid": "kernel (MMD²) distance of generated vs target features (lower is better, ~0 for one distribution)",
    "intra_lpips": "mean vanilla LPIPS within clusters around the training images: diversity (higher is better, ~0 when copying)",
    "intra_stlpips": "mean shift-tolerant LPIPS within clusters around the training images: diversity (higher is better, ~0 when copying)",
    "corr_l1": "mean |transform(G_s(z)) − G_t(z)| in [-1, 1] units (lower is better, 0 is perfect correspondence)",
    "corr_lpips": "mean vanilla LPIPS between transform(G_s(z)) and G_t(z) (lower is better)",
    "corr_stlpips": "mean shift-tolerant LPIPS between transform(G_s(z)) and G_t(z) (lower is better)",
    "corr_edge_ratio": "edge-map distance of G_t(z) to G_s(z') for other z' over that to G_s(z) (higher is better, 1 = no correspondence)",
    "corr_lpips_ratio": "vanilla LPIPS of G_t(z) to G_s(z') for other z' over that to G_s(z) (higher is better, 1 = no correspondence)",
    "corr_stlpips_ratio": "shift-tolerant LPIPS of G_t(z) to G_s(z') for other z' over that to G_s(z) (higher is better, 1 = no correspondence)",
}
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
.num{text-align:right;font-family:monospace}.offline{background:#fff3cd;border:1px solid #e0c36a;padding:8px}
img{image-rendering:pixelated;max-width:100%}figure{margin:1.5em 0}"""


@dataclass(frozen=True)
class Figure:
    """One image of the report; `slug` also names its PNG next to the report."""

    slug: str
    title: str
    caption: str
    image: Image.Image


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _meaning(key: str) -> str:
    if key.startswith("gap_"):
        return f"share of the distance from the unadapted source to the ideal T∘G_s that the generator closes, in {key.removeprefix('gap_')} (0 = the source, 1 = the ideal; higher is better)"
    return METRIC_MEANINGS[key.removesuffix("_offline")]


def _extractor_for(key: str, result: EvalResult) -> str:
    key = key.removeprefix("gap_")
    if key.startswith(("fid", "kid")):
        return result.extractors.get("features", "")
    for model in ("stlpips", "lpips"):  # "stlpips" first: it contains "lpips"
        if model in key:
            return result.extractors.get(model, "")
    return "edges (Sobel)" if "edge" in key else "pixels"


def extractor_notice(result: EvalResult) -> str:
    """The sentence that says which extractors produced the numbers, and whether any was offline."""
    if result.offline:
        names = ", ".join(result.offline)
        return (
            f"Offline feature extractors were used ({names}), as asked (--features offline). "
            "Metrics computed with them carry the suffix _offline and are comparable only with numbers from the same extractor, "
            "never with published FID/KID values."
        )
    used = ", ".join(f"{what}: {name}" for what, name in result.extractors.items()) or "none"
    return f"Pretrained extractors were used ({used}); no offline extractor."


def interval_text(result: EvalResult, key: str) -> str:
    """'[low, high]' of a metric's bootstrap interval, or '' where it has none (FID)."""
    if key not in result.intervals:
        return ""
    low, high = result.intervals[key]
    return f"[{low:.4f}, {high:.4f}]"


def metric_table(result: EvalResult) -> str:
    level = f"{result.settings.interval_level:.0%} interval"
    rows = [
        f"<tr><td>{html.escape(key)}</td><td class=num>{value:.4f}</td><td class=num>{interval_text(result, key)}</td>"
        f"<td>{html.escape(_extractor_for(key, result))}</td><td>{html.escape(_meaning(key))}</td></tr>"
        for key, value in result.metrics.items()
    ]
    rows += [f"<tr><td>{html.escape(key)}</td><td>not defined</td><td></td><td></td><td>{html.escape(reason)}</td></tr>" for key, reason in result.not_defined.items()]
    header = f"<tr><th>metric</th><th>value</th><th>{level} (bootstrap)</th><th>extractor</th><th>meaning</th></tr>"
    return "<table>" + header + "".join(rows) + "</table>"


def gap_table(result: EvalResult) -> str:
    """For a closed-world target: each distance for the source, this generator and the ideal, from which gap_<key> follows."""
    gap = result.details.get("gap")
    if not gap:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td class=num>{v['source']:.4f}</td><td class=num>{v['generator']:.4f}</td><td class=num>{v['ideal']:.4f}</td>"
        f"<td class=num>{result.metrics[f'gap_{key}']:.3f}</td></tr>"
        for key, v in gap.items()
    )
    return (
        "<h2>Gap closed</h2><p>The target is closed-world: its ideal adapted generator T∘G_s is known and was measured by the same protocol. "
        "gap = (source − generator) / (source − ideal).</p>"
        f"<table><tr><th>distance</th><th>source G_s</th><th>this generator</th><th>ideal T∘G_s</th><th>gap closed</th></tr>{rows}</table>"
    )


def _settings_table(result: EvalResult) -> str:
    inputs = {"generator": result.generator, "target": result.target, "source": result.source, "train (intra-LPIPS clusters)": result.train}
    items = {**inputs, **asdict(result.settings), "elapsed_s": f"{result.elapsed_s:.1f}"}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _figure(figure: Figure) -> str:
    return (
        f"<figure><h2>{html.escape(figure.title)}</h2><img src='{png_data_uri(figure.image)}' alt='{html.escape(figure.slug)}'>"
        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>"
    )


def render_report(result: EvalResult, figures: Sequence[Figure]) -> str:
    """The whole report page as a string."""
    notice_class = "offline" if result.offline else "extractors"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>fsg eval: {html.escape(result.generator)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Evaluation of {html.escape(result.generator)}</h1>"
        f"<p class={notice_class}>{html.escape(extractor_notice(result))}</p>"
        f"<h2>Metrics</h2>{metric_table(result)}{gap_table(result)}"
        + "".join(_figure(f) for f in figures)
        + f"<h2>Settings</h2>{_settings_table(result)}</body></html>"
    )
