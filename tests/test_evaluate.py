"""`fsg eval` / `evaluate`: named metrics in metrics.json, a self-contained report, clear refusals.

The metrics themselves are tested in test_metrics.py; here only what the evaluation stage adds.
Vanilla LPIPS's backbone is hidden (an empty torchvision cache) so which keys appear is certain. Most
evaluations here use the fast offline FID features (`--features offline`); one runs the Inception.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import TINY, tiny_source, write_minegan_run, write_target_folder

from fsg_ray import storage
from fsg_ray.adapt.run import RunSpec, correspondence_grid, prepare
from fsg_ray.cli import main
from fsg_ray.config import load_config
from fsg_ray.adapt.sampler import MinedGenerator, load_sampler
from fsg_ray.eval.protocol import evaluate, parse_metrics, target_features
from fsg_ray.eval.results import EvalError, EvalSettings
from fsg_ray.nets.checkpoints import write_checkpoint

SMALL = ["--n-generated", "32", "--n-real", "32", "--n-lpips", "40", "--n-corr", "8", "--features", "offline"]
SMALL_SETTINGS = EvalSettings(n_generated=32, n_real=32, n_lpips=40, n_corr=8, kid_subsets=5, features="offline")
NO_VANILLA_LPIPS = {"intra_lpips", "corr_lpips", "corr_lpips_ratio"}


pytestmark = pytest.mark.usefixtures("no_vanilla_lpips_backbone")


@pytest.fixture(scope="module")
def sketch_eval(tmp_path_factory: pytest.TempPathFactory, source: str) -> Path:
    """One `fsg eval` of every metric on toy:sketch, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("sketch") / "eval"
    assert main(["eval", "--generator", source, "--target", "toy:sketch", "--source", source, "--out", str(out), *SMALL, "--seed", "3"]) == 0
    return out


def test_eval_on_an_image_space_toy_target_writes_every_metric_under_its_extractor_name(sketch_eval: Path):
    written = json.loads((sketch_eval / "metrics.json").read_text())
    assert set(written["metrics"]) == {"kid_offline", "intra_stlpips", "corr_l1", "corr_stlpips"}
    assert written["extractors"] == {"features": written["extractors"]["features"], "stlpips": "stlpips-vgg"}
    assert written["extractors"]["features"].startswith("offline:")
    assert written["settings"]["n_generated"] == 32 and written["settings"]["seed"] == 3 and written["train"] == "toy:sketch"
    # 32 samples of 496-d features: FID is singular, so it is listed with the reason; G is its own source here.
    assert "rank by kid" in written["not_defined"]["fid"] and NO_VANILLA_LPIPS <= set(written["not_defined"])
    assert "the generator is its source" in written["not_defined"]["corr_edge_ratio"]


def test_report_is_self_contained_with_table_images_and_offline_notice(sketch_eval: Path):
    page = (sketch_eval / "report.html").read_text()
    keys = json.loads((sketch_eval / "metrics.json").read_text())["metrics"]
    assert "<table>" in page and all(f"<td>{key}</td>" in page for key in keys)
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2  # correspondence and clusters
    assert not re.search(r"src='(?!data:)", page)  # nothing loaded from next to the file
    assert "Offline feature extractors were used" in page and "stlpips-vgg" in page


def test_cluster_grid_has_a_row_per_training_image(sketch_eval: Path):
    columns, rows = 1 + 8, 10  # training image + members shown; 10 shots
    assert Image.open(sketch_eval / "clusters.png").size == (columns * (TINY.size + 2) + 2, rows * (TINY.size + 2) + 2)


def test_correspondence_grid_shows_source_transform_and_adapted_rows(sketch_eval: Path):
    assert Image.open(sketch_eval / "correspondence.png").size == (8 * (TINY.size + 2) + 2, 3 * (TINY.size + 2) + 2)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stand-in for an adapted generator: the tiny source's weights perturbed, so G_t(z) follows G_s(z) but differs."""
    ckpt = tiny_source()
    torch.manual_seed(1)
    ckpt["g_ema"] = {k: v + 0.05 * torch.randn_like(v) if k.startswith("convs") else v for k, v in ckpt["g_ema"].items()}
    path = tmp_path_factory.mktemp("adapted") / "adapted.pt"
    write_checkpoint(str(path), {k: ckpt[k] for k in ("g", "g_ema", "d")})
    return str(path)


def test_corr_ratio_is_measured_for_a_parameter_space_target_where_corr_is_not_defined(tmp_path: Path, source: str, adapted: str):
    result = evaluate(adapted, "toy:babies", source, metrics=None, settings=SMALL_SETTINGS, out=str(tmp_path))
    assert "target toy:babies defines no transform(G_s(z))" in result.not_defined["corr"]
    assert {"corr_edge_ratio", "corr_stlpips_ratio"} <= set(result.metrics) and not {"corr_l1", "corr_stlpips"} & set(result.metrics)
    assert result.metrics["corr_edge_ratio"] > 1 and result.metrics["corr_stlpips_ratio"] > 1
    assert set(result.details["corr_ratio"]) == {"edge_matched", "edge_shuffled", "stlpips_matched", "stlpips_shuffled"}
    page = (tmp_path / "report.html").read_text()
    assert "not defined" in page and "<td>corr_edge_ratio</td>" in page


def test_intra_lpips_of_a_folder_target_needs_the_training_images(tmp_path: Path, source: str):
    folder = write_target_folder(tmp_path / "shots")
    with pytest.raises(EvalError, match="--train"):
        evaluate(source, folder, metrics=["intra_lpips"], settings=SMALL_SETTINGS)
    result = evaluate(source, folder, metrics=["intra_lpips"], settings=SMALL_SETTINGS, train=folder)
    assert result.train == folder and "intra_stlpips" in result.metrics


def test_eval_writes_its_outputs_to_s3(s3_bucket: str, source: str):
    out = f"s3://{s3_bucket}/evals/one"
    evaluate(source, "toy:sketch", metrics=["kid"], settings=SMALL_SETTINGS, out=out)
    assert {"metrics.json", "report.html", "samples.png"} <= set(storage.list_dir(out))
    assert set(json.loads(storage.read_bytes(storage.join(out, "metrics.json")))["metrics"]) == {"kid_offline"}


def test_default_features_are_the_inception_and_give_kid_under_its_standard_name(source: str):
    settings = EvalSettings(n_generated=4, n_real=4, kid_subsets=2, n_lpips=12)
    result = evaluate(source, "toy:sketch", metrics=None, settings=settings)
    assert result.metrics["kid"] > 0 and result.extractors["features"].startswith("inception-2015-12-05")
    assert "FID needs more than 2048 samples per set" in result.not_defined["fid"]
    with pytest.raises(EvalError, match="fid is not defined here: FID needs more than 2048"):
        evaluate(source, "toy:sketch", metrics=["fid"], settings=settings)


def test_precomputed_target_features_give_the_same_kid(source: str):
    features = target_features("toy:sketch", TINY.size, SMALL_SETTINGS)
    assert features.shape == (32, 496)
    direct = evaluate(source, "toy:sketch", metrics=["kid"], settings=SMALL_SETTINGS)
    reused = evaluate(source, "toy:sketch", metrics=["kid"], settings=SMALL_SETTINGS, real_features=features)
    assert reused.metrics == direct.metrics
    with pytest.raises(EvalError, match="real_features"):
        evaluate(source, "toy:sketch", metrics=["kid"], settings=SMALL_SETTINGS, real_features=features[:, :10])


def test_parse_metrics_keeps_order_and_rejects_repeats():
    assert parse_metrics("kid, fid") == ("kid", "fid")
    with pytest.raises(EvalError, match="twice"):
        parse_metrics("fid,fid")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "toy:sketch", "--metrics", "fid,lpips"], "unknown metric 'lpips'"),
        (["--target", "toy:sketch", "--metrics", "corr"], "no source generator given"),
        (["--target", "toy:babies", "--metrics", "corr", "--source", "SOURCE"], "target toy:babies defines no transform(G_s(z))"),
        (["--target", "toy:babies", "--metrics", "corr_ratio"], "corr_ratio is not defined here: no source generator given"),
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


def source_with_other_noise_in_g_ema() -> dict:
    """A source as rosinality's code writes it: `g` and `g_ema` with the same weights, different noise maps.

    The noise strengths are set to 1: a fresh generator's are 0, and then its noise maps change nothing.
    """
    ckpt = tiny_source()
    g = {k: torch.ones_like(v) if k.endswith("noise.weight") else v for k, v in ckpt["g"].items()}
    g_ema = {k: torch.randn_like(v) if k.startswith("noises.") else v for k, v in g.items()}
    return {**ckpt, "g": g, "g_ema": g_ema}


@pytest.fixture(scope="module")
def noisy_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("noisy") / "source.pt"
    write_checkpoint(str(path), {k: source_with_other_noise_in_g_ema()[k] for k in ("g", "g_ema", "d")})
    return str(path)


def test_an_unadapted_g_is_in_perfect_correspondence_with_g_ema_of_its_source(tmp_path: Path, noisy_source: str):
    source = source_with_other_noise_in_g_ema()
    path = tmp_path / "unadapted.pt"  # G_t as adaptation starts it: the source's `g`, noise maps included
    write_checkpoint(str(path), {"g": source["g"], "g_ema": source["g"], "d": source["d"]})
    settings = EvalSettings(n_corr=4, features="offline")
    result = evaluate(str(path), "toy:babies", noisy_source, metrics=["corr_ratio"], settings=settings, out=str(tmp_path / "eval"))
    assert set(result.not_defined) >= {"corr_edge_ratio", "corr_stlpips_ratio"}  # identical images: infinite ratios
    grid = torch.tensor(list(Image.open(tmp_path / "eval" / "correspondence.png").getdata()))
    rows = grid.view(2 * (TINY.size + 2) + 2, -1, 3)[2:-2]
    assert torch.equal(rows[: TINY.size], rows[TINY.size + 2 : 2 * TINY.size + 2])  # source row == adapted row


def test_training_grid_renders_g_ema_with_the_sources_noise(noisy_source: str):
    spec = RunSpec(source=noisy_source, target="toy:sketch", config=load_config(None, []))
    run = prepare(spec)  # step 0: G_ema still has the source's weights, but g_ema's noise maps
    image = correspondence_grid(run)
    pixels = torch.tensor(list(image.getdata())).view(image.size[1], image.size[0], 3)
    size = run.nets.g_ema.config.size
    assert torch.equal(pixels[2 : 2 + size], pixels[size + 4 : 2 * size + 4])


def test_fsg_sample_pair_with_draws_both_rows_with_the_sources_noise(tmp_path: Path, noisy_source: str):
    source = source_with_other_noise_in_g_ema()
    path = tmp_path / "unadapted.pt"  # G_t as adaptation starts it: the source's `g`, noise maps included
    write_checkpoint(str(path), {"g": source["g"], "g_ema": source["g"], "d": source["d"]})
    out = tmp_path / "pairs.png"
    assert main(["sample", "--generator", str(path), "--pair-with", noisy_source, "--seeds", "0-3", "--columns", "4", "--out", str(out)]) == 0
    grid = torch.tensor(list(Image.open(out).getdata()))
    rows = grid.view(2 * (TINY.size + 2) + 2, -1, 3)[2:-2]
    assert torch.equal(rows[: TINY.size], rows[TINY.size + 2 : 2 * TINY.size + 2])  # same weights, same noise: equal rows
