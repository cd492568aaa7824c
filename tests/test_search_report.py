"""The search report's tables, from a results frame written by hand (no Ray): best per method, intervals."""

import pandas as pd
from PIL import Image

from fsg_ray.search.report import SearchMeta, best_per_value, render_html

META = SearchMeta("methods", "gap_corr_stlpips", "max", {"method": "categorical", "cdc.weight": "log"})


def report(trial_id: str, method: str, step: int, value: float, status: str) -> dict:
    return {
        "trial_id": trial_id, "method": method, "cdc.weight": 500.0, "step": step, "status": status,
        "gap_corr_stlpips": value, "gap_corr_stlpips_low": value - 0.02, "gap_corr_stlpips_high": value + 0.02,
        "checkpoint": f"runs/m/trials/{trial_id}/checkpoint_{step:06d}/state.pt",
    }


FRAME = pd.DataFrame([
    report("t0", "cdc", 50, 0.20, "completed"), report("t0", "cdc", 100, 0.41, "completed"),
    report("t1", "cdc", 50, 0.10, "stopped_early"),
    report("t2", "tgan", 50, 0.30, "completed"), report("t2", "tgan", 100, 0.35, "completed"),
    report("t3", "ewc", 50, -0.05, "stopped_early"),
])


def test_each_method_gets_its_best_trial_by_its_last_report_best_first():
    best = best_per_value(FRAME, META, "method")
    assert list(best["method"]) == ["cdc", "tgan", "ewc"]
    assert list(best["trial_id"]) == ["t0", "t2", "t3"]
    assert list(best["step"]) == [100, 100, 50] and best["status"].iloc[-1] == "stopped_early"


def test_a_minimised_metric_ranks_the_other_way():
    best = best_per_value(FRAME, SearchMeta("m", "gap_corr_stlpips", "min", META.params), "method")
    assert list(best["trial_id"]) == ["t3", "t1", "t2"]


def test_the_page_shows_the_best_per_method_and_every_interval():
    page = render_html(FRAME, META, Image.new("RGB", (4, 4)), "runs/m", None)
    assert "<h2>Best per method</h2>" in page and "cdc.weight</h2>" not in page
    assert "[0.39, 0.43]" in page and "[-0.07, -0.03]" in page
