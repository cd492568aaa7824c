"""`fsg eval` / `evaluate`: named metrics in metrics.json, a self-contained report, clear refusals.

The metrics themselves are tested in test_metrics.py; here only what the evaluation stage adds.
Pretrained weights are hidden (empty caches) so the offline extractors, and their names, are certain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import TINY, write_minegan_run, write_target_folder, write_tiny_source

from fsg_ray import storage
from fsg_ray.cli import main
from fsg_ray.evaluate import EvalError, EvalSettings, MinedGenerator, evaluate, load_sampler, parse_metrics
from fsg_ray.metrics import features

SMALL = ["--n-generated", "32", "--n-real", "32", "--n-lpips", "40"]
SMALL_SETTINGS = EvalSettings(n_generated=32, n_real=32, n_lpips=40, n_corr=8, kid_subsets=5)


@pytest.fixture(autouse=True, scope="module")
def no_pretrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    empty = tmp_path_factory.mktemp("no-weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "CLEANFID_CACHE_DIR", empty)
        patch.setenv("TORCH_HOME", str(empty))
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_tiny_source(tmp_path_factory.mktemp("source") / "source.pt")


@pytest.fixture(scope="module")
def sketch_eval(tmp_path_factory: pytest.TempPathFactory, source: str) -> Path:
    """One `fsg eval` of every metric on toy:sketch, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("sketch") / "eval"
    assert main(["eval", "--generator", source, "--target", "toy:sketch", "--source", source, "--out", str(out), *SMALL, "--seed", "3"]) == 0
    return out


def test_eval_on_an_image_space_toy_target_writes_every_metric_under_its_extractor_name(sketch_eval: Path):
    written = json.loads((sketch_eval / "metrics.json").read_text())
    assert set(written["metrics"]) == {"fid_offline", "kid_offline", "intra_lpips_offline", "corr_l1", "corr_lpips_offline"}
    assert written["extractors"]["features"].startswith("offline:") and written["extractors"]["lpips"].startswith("offline:")
    assert written["settings"]["n_generated"] == 32 and written["settings"]["seed"] == 3
    assert written["train"] == "toy:sketch" and written["not_defined"] == {}


def test_report_is_self_contained_with_table_images_and_offline_notice(sketch_eval: Path):
    page = (sketch_eval / "report.html").read_text()
    keys = json.loads((sketch_eval / "metrics.json").read_text())["metrics"]
    assert "<table>" in page and all(f"<td>{key}</td>" in page for key in keys)
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2  # correspondence and clusters
    assert not re.search(r"src='(?!data:)", page)  # nothing loaded from next to the file
    assert "Offline feature extractors were used" in page


def test_cluster_grid_has_a_row_per_training_image(sketch_eval: Path):
    columns, rows = 1 + 8, 10  # training image + members shown; 10 shots
    assert Image.open(sketch_eval / "clusters.png").size == (columns * (TINY.size + 2) + 2, rows * (TINY.size + 2) + 2)


def test_correspondence_grid_shows_source_transform_and_adapted_rows(sketch_eval: Path):
    assert Image.open(sketch_eval / "correspondence.png").size == (8 * (TINY.size + 2) + 2, 3 * (TINY.size + 2) + 2)


def test_corr_for_a_parameter_space_target_is_listed_as_not_defined(tmp_path: Path, source: str):
    result = evaluate(source, "toy:babies", source, metrics=None, settings=SMALL_SETTINGS, out=str(tmp_path))
    assert not any(key.startswith("corr") for key in result.metrics)
    assert "toy:babies is not an image-space toy domain" in result.not_defined["corr"]
    assert "not defined" in (tmp_path / "report.html").read_text()


def test_intra_lpips_of_a_folder_target_needs_the_training_images(tmp_path: Path, source: str):
    folder = write_target_folder(tmp_path / "shots")
    with pytest.raises(EvalError, match="--train"):
        evaluate(source, folder, metrics=["intra_lpips"], settings=SMALL_SETTINGS)
    result = evaluate(source, folder, metrics=["intra_lpips"], settings=SMALL_SETTINGS, train=folder)
    assert result.train == folder and "intra_lpips_offline" in result.metrics


def test_eval_writes_its_outputs_to_s3(s3_bucket: str, source: str):
    out = f"s3://{s3_bucket}/evals/one"
    evaluate(source, "toy:sketch", metrics=["kid"], settings=SMALL_SETTINGS, out=out)
    assert {"metrics.json", "report.html", "samples.png"} <= set(storage.list_dir(out))
    assert set(json.loads(storage.read_bytes(storage.join(out, "metrics.json")))["metrics"]) == {"kid_offline"}


def test_parse_metrics_keeps_order_and_rejects_repeats():
    assert parse_metrics("kid, fid") == ("kid", "fid")
    with pytest.raises(EvalError, match="twice"):
        parse_metrics("fid,fid")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "toy:sketch", "--metrics", "fid,lpips"], "unknown metric 'lpips'"),
        (["--target", "toy:sketch", "--metrics", "corr"], "no source generator given"),
        (["--target", "toy:babies", "--metrics", "corr", "--source", "SOURCE"], "toy:babies is not an image-space toy domain"),
        (["--target", "toy:cats"], "unknown toy domain 'cats'"),
        (["--target", "toy:sketch", "--n-generated", "1"], "n_generated"),
    ],
)
def test_bad_eval_requests_exit_2_naming_the_problem(tmp_path: Path, source: str, capsys, extra: list[str], message: str):
    argv = ["eval", "--generator", source, "--out", str(tmp_path / "eval"), *[source if a == "SOURCE" else a for a in extra]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_missing_generator_file_is_named(tmp_path: Path, capsys):
    missing = str(tmp_path / "nope.pt")
    assert main(["eval", "--generator", missing, "--target", "toy:sketch", "--metrics", "kid", "--out", str(tmp_path / "eval")]) == 2
    assert missing in capsys.readouterr().err


def test_a_minegan_run_is_evaluated_through_its_miner(tmp_path: Path):
    miner = write_minegan_run(tmp_path / "minegan.pt")
    G, _ = load_sampler(str(tmp_path / "minegan.pt"), torch.device("cpu"))
    z = torch.randn(2, TINY.style_dim, generator=torch.Generator().manual_seed(0))
    assert isinstance(G, MinedGenerator)
    assert torch.allclose(G(z), G.g(miner(z)))
    assert not torch.allclose(G(z), G.g(z))
