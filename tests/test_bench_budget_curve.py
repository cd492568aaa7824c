"""bench/budget_curve.py's figure: a panel for every metric a target defines, and none for those it does not."""

import sys
from pathlib import Path

from fsg_ray.eval.results import EvalResult, EvalSettings

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))  # budget_curve imports its sibling `quality`
import budget_curve  # noqa: E402


def row(target: str, method: str, steps: int, metrics: dict[str, float]) -> "budget_curve.Row":
    result = EvalResult("g", f"toy:{target}", "toy:faces", None, metrics, {}, {}, {}, EvalSettings())
    return budget_curve.Row(target, method, steps, result, 1.0)


def test_a_metric_a_target_does_not_define_gets_no_panel():
    sketch = {"kid": 0.1, "intra_stlpips": 0.2, "corr_l1": 0.3}
    babies = {"kid": 0.1, "intra_stlpips": 0.2}  # no image transform: corr_l1 is undefined
    rows = [row(target, method, steps, metrics) for target, metrics in (("sketch", sketch), ("babies", babies)) for method in ("cdc", "tgan") for steps in (50, 100)]
    fig = budget_curve.figure(rows, ["sketch", "babies"], ["cdc", "tgan"])
    titles = sorted(ax.get_title() for ax in fig.axes)
    assert titles == ["babies: intra_stlpips", "babies: kid", "sketch: corr_l1", "sketch: intra_stlpips", "sketch: kid"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)
