"""Closed-world targets `closed:T[@SOURCE]`: shots and held-out images are T(G_s(z)), so the ideal is T∘G_s.

What is checked: the sets are deterministic, disjoint and what they say they are; the ideal closes the
whole gap with paired distance 0, the unadapted source none of it; every bad name is refused naming it.
Tiny generators and the offline features keep each evaluation to seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import TINY, write_tiny_source

from fsg_ray.adapt.run import RunSpec, prepare
from fsg_ray.adapt.sampler import load_sampler
from fsg_ray.adapt.targets import HELD_OUT_SEED, SHOTS_SEED, TargetError, closed_world, input_uris, load_eval_set, load_target
from fsg_ray.cli import main
from fsg_ray.config import load_config
from fsg_ray.data.toy import sketch
from fsg_ray.eval.protocol import evaluate
from fsg_ray.eval.validation import Validation
from fsg_ray.eval.results import EvalError, EvalSettings
from fsg_ray.metrics.features import seeded_latents
from fsg_ray.ray.train import pin_local_inputs

SETTINGS = EvalSettings(n_generated=24, n_real=24, n_lpips=24, n_corr=12, kid_subsets=5, features="offline", bootstrap_rounds=200)
GAP_METRICS = ["kid", "corr", "gap"]


pytestmark = pytest.mark.usefixtures("no_vanilla_lpips_backbone")


@pytest.fixture(scope="module")
def target(source: str) -> str:
    return f"closed:sketch@{source}"


def test_shots_and_held_out_images_are_deterministic(target: str):
    assert torch.equal(load_target(target, TINY.size), load_target(target, TINY.size))
    assert torch.equal(load_eval_set(target, TINY.size, 6), load_eval_set(target, TINY.size, 6))


def test_shots_and_held_out_latents_are_disjoint(target: str):
    shots, held_out = seeded_latents(10, TINY.style_dim, SHOTS_SEED), seeded_latents(500, TINY.style_dim, HELD_OUT_SEED)
    assert not (shots[:, None] == held_out[None]).all(dim=2).any()
    images_shots, images_held_out = load_target(target, TINY.size), load_eval_set(target, TINY.size, 50)
    assert not (images_shots[:, None] == images_held_out[None]).flatten(2).all(dim=2).any()


def test_shots_are_the_transform_of_the_source_samples_through_its_stored_noise(source: str, target: str):
    G_s, _ = load_sampler(source)
    with torch.no_grad():
        expected = sketch(G_s(seeded_latents(10, TINY.style_dim, SHOTS_SEED), noise="const").clamp(-1, 1))
    assert torch.allclose(load_target(target, TINY.size), expected, atol=1e-6)


def test_default_source_is_the_shipped_toy_model():
    closed = closed_world("closed:painting")
    assert (closed.transform, closed.source, closed.spec) == ("painting", "toy:faces", "closed:painting")
    assert closed_world("toy:painting") is None and closed_world("shots/") is None


def test_ideal_closes_the_whole_gap_with_zero_paired_distance(target: str):
    result = evaluate("ideal", target, metrics=GAP_METRICS, settings=SETTINGS)
    assert result.metrics["corr_l1"] < 1e-6 and result.metrics["corr_stlpips"] < 1e-4
    for key in ("gap_kid_offline", "gap_corr_l1", "gap_corr_stlpips"):
        assert result.metrics[key] == pytest.approx(1.0, abs=1e-4), key
    low, high = result.intervals["gap_corr_l1"]
    assert low == pytest.approx(1.0, abs=1e-4) and high == pytest.approx(1.0, abs=1e-4)
    assert result.details["gap"]["corr_l1"]["ideal"] == 0.0


def test_unadapted_source_closes_none_of_the_gap(source: str, target: str):
    result = evaluate(source, target, metrics=GAP_METRICS, settings=SETTINGS)
    for key in ("gap_kid_offline", "gap_corr_l1", "gap_corr_stlpips"):
        assert result.metrics[key] == pytest.approx(0.0, abs=1e-9), key
        assert result.intervals[key] == pytest.approx((0.0, 0.0), abs=1e-9), key
    assert result.details["gap"]["kid_offline"]["source"] == result.metrics["kid_offline"]
    assert result.source == source  # the closed-world target brought its own source


def test_another_generator_lands_between_or_beyond_and_its_interval_holds_its_value(tmp_path: Path, target: str):
    other = write_tiny_source(tmp_path / "other.pt", seed=5)
    result = evaluate(other, target, metrics=GAP_METRICS, settings=SETTINGS)
    for key in ("kid_offline", "corr_l1", "corr_stlpips", "gap_kid_offline", "gap_corr_l1"):
        low, high = result.intervals[key]
        assert low <= result.metrics[key] <= high and low < high, key
    assert result.metrics["gap_corr_l1"] < 0.99  # a random generator is no sketch of the source


def test_default_metrics_include_gap_on_a_closed_target_and_explain_its_absence_elsewhere(source: str, target: str):
    closed = evaluate(source, target, settings=SETTINGS)
    assert {"gap_kid_offline", "gap_corr_l1", "gap_corr_stlpips"} <= set(closed.metrics)
    data_defined = evaluate(source, "toy:sketch", source_uri=source, settings=SETTINGS)
    assert "data-defined" in data_defined.not_defined["gap"] and not any(k.startswith("gap_") for k in data_defined.metrics)


def test_gap_asked_of_a_data_defined_target_is_refused_naming_it(source: str):
    with pytest.raises(EvalError, match=r"gap is not defined here: target toy:sketch is data-defined"):
        evaluate(source, "toy:sketch", source_uri=source, metrics=["kid", "gap"], settings=SETTINGS)


def test_gap_alone_is_refused_saying_what_it_needs(target: str, source: str):
    with pytest.raises(EvalError, match="gap closes the distance that fid, kid, corr measure"):
        evaluate(source, target, metrics=["gap"], settings=SETTINGS)


def test_ideal_of_a_data_defined_target_is_refused(source: str):
    with pytest.raises(EvalError, match="toy:sketch is data-defined"):
        evaluate("ideal", "toy:sketch", source_uri=source, metrics=["kid"], settings=SETTINGS)


def test_another_source_than_the_targets_own_is_refused(tmp_path: Path, target: str, source: str):
    other = write_tiny_source(tmp_path / "other.pt", seed=5)
    with pytest.raises(EvalError, match=rf"source: {other} is not the source of the closed-world target"):
        evaluate(source, target, source_uri=other, metrics=["kid"], settings=SETTINGS)


def test_unknown_transform_is_refused_listing_the_valid_ones():
    with pytest.raises(TargetError, match=r"closed:blur: unknown transform 'blur'; closed-world targets take one of tint, sketch, painting, negative"):
        load_target("closed:blur", 64)


def test_unloadable_source_is_refused_naming_the_target_and_the_uri(tmp_path: Path, capsys: pytest.CaptureFixture):
    missing = str(tmp_path / "missing.pt")
    argv = ["eval", "--generator", "toy:faces", "--target", f"closed:sketch@{missing}", "--metrics", "kid", "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    assert f"closed:sketch@{missing}: cannot load its source generator {missing}" in capsys.readouterr().err


def test_size_other_than_the_sources_is_refused(target: str):
    with pytest.raises(TargetError, match="makes 32 px images, 64 px were asked for"):
        load_target(target, 64)


def test_adaptation_trains_on_the_closed_world_shots(source: str, target: str):
    run = prepare(RunSpec(source, target, load_config(None, ["steps=1"])))
    assert torch.equal(run.targets.images, load_target(target, TINY.size))


def test_ray_runs_ship_the_targets_source_and_record_it_absolutely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_tiny_source(tmp_path / "src.pt")
    monkeypatch.chdir(tmp_path)
    pinned = pin_local_inputs(RunSpec("toy:faces", "closed:tint@src.pt", load_config(None, [])))
    assert pinned.target == f"closed:tint@{tmp_path / 'src.pt'}"
    assert input_uris(pinned.target) == [pinned.target, str(tmp_path / "src.pt")]
    assert input_uris("toy:tint") == ["toy:tint"]



def test_a_search_trial_reports_the_gap_with_its_interval_bounds(source: str, target: str):
    reported = Validation(target, source, ("corr", "gap"), n=12, features="offline")(source)
    assert reported["gap_corr_stlpips"] == pytest.approx(0.0, abs=1e-9)
    assert reported["corr_stlpips_low"] <= reported["corr_stlpips"] <= reported["corr_stlpips_high"]
    assert {"gap_corr_l1_low", "gap_corr_l1_high", "extractor_stlpips", "eval_s"} <= set(reported)
