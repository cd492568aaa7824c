"""The `fsg` command end to end on a tiny model: adapt, resume, sample, export, and its error messages."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import write_minegan_run, write_target_folder, write_tiny_source

from fsg_ray import load_generator
from fsg_ray.cli import main
from fsg_ray.grids import image_grid, seeded_z

FAST = ["--set", "checkpoint_every=2", "--set", "sample_every=2", "--set", "cdc.batch=2", "--quiet"]


def adapt(source: str, target: str, out: Path, steps: int, *extra: str) -> int:
    return main(["adapt", "--source", source, "--target", target, "--out", str(out), "--steps", str(steps), *FAST, *extra])


def test_adapt_on_toy_sketch_writes_checkpoints_and_correspondence_grids(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    assert adapt(source, "toy:sketch", tmp_path / "run", 4) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == ["checkpoint_000002", "checkpoint_000004"]
    grid = Image.open(tmp_path / "run" / "samples" / "step_000004.png")
    assert grid.size == (8 * 34 + 2, 4 * 34 + 2)  # 16 pairs, 8 per row: source row above target row
    adapted = load_generator(str(tmp_path / "run"))
    z = torch.randn(2, adapted.style_dim)
    assert not torch.equal(adapted(z, noise="const"), load_generator(source)(z, noise="const"))
    exported = torch.load(tmp_path / "run" / "generator.pt", weights_only=True)
    assert sorted(exported) == ["d", "g", "g_ema"]
    assert torch.equal(load_generator(str(tmp_path / "run" / "generator.pt"))(z, noise="const"), adapted(z, noise="const"))


def test_rerunning_with_more_steps_continues_from_the_latest_checkpoint(tmp_path: Path, capsys):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2)
    first = (tmp_path / "run" / "checkpoint_000002" / "state.pt").read_bytes()
    assert adapt(source, "toy:sketch", tmp_path / "run", 4) == 0
    assert (tmp_path / "run" / "checkpoint_000002" / "state.pt").read_bytes() == first
    assert torch.load(tmp_path / "run" / "checkpoint_000004" / "state.pt", weights_only=True)["step"] == 4


def test_rerunning_with_another_config_is_refused_naming_the_key(tmp_path: Path, capsys):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2)
    assert adapt(source, "toy:sketch", tmp_path / "run", 4, "--set", "cdc.weight=5") == 2
    assert "cannot resume, config cdc.weight was 1000.0, now 5.0" in capsys.readouterr().err


def test_a_checkpoint_written_before_a_config_field_existed_resumes_under_its_default(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2)
    state = tmp_path / "run" / "checkpoint_000002" / "state.pt"
    ckpt = torch.load(state, weights_only=True)
    del ckpt["config"]["augment"], ckpt["config"]["optim"]["precision"]
    torch.save(ckpt, state)
    assert adapt(source, "toy:sketch", tmp_path / "run", 4) == 0
    assert adapt(source, "toy:sketch", tmp_path / "run", 6, "--set", "optim.precision=bf16") == 2


def test_a_run_resumes_only_under_its_noise_setting(tmp_path: Path, capsys):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2, "--set", "noise.strength=frozen")
    assert adapt(source, "toy:sketch", tmp_path / "run", 4, "--set", "noise.strength=learned") == 2
    assert "cannot resume, config noise.strength was 'frozen', now 'learned'" in capsys.readouterr().err
    assert adapt(source, "toy:sketch", tmp_path / "run", 4, "--set", "noise.strength=frozen") == 0


def test_a_checkpoint_from_before_the_noise_setting_resumes_only_as_the_learned_strengths_it_trained(tmp_path: Path, capsys):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2, "--set", "noise.strength=learned")
    state = tmp_path / "run" / "checkpoint_000002" / "state.pt"
    ckpt = torch.load(state, weights_only=True)
    del ckpt["config"]["noise"]
    torch.save(ckpt, state)
    assert adapt(source, "toy:sketch", tmp_path / "run", 4) == 2
    assert "cannot resume, config noise.strength was 'learned', now 'penalised'" in capsys.readouterr().err
    assert adapt(source, "toy:sketch", tmp_path / "run", 4, "--set", "noise.strength=learned") == 0


def test_adapt_reads_a_folder_of_user_images(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    assert adapt(source, write_target_folder(tmp_path / "shots"), tmp_path / "run", 2, "--method", "tgan") == 0
    assert torch.load(tmp_path / "run" / "checkpoint_000002" / "state.pt", weights_only=True)["method"] == "tgan"


def test_sample_of_a_minegan_run_goes_through_its_miner(tmp_path: Path):
    miner = write_minegan_run(tmp_path / "minegan.pt")
    assert main(["sample", "--generator", str(tmp_path / "minegan.pt"), "--seeds", "0-3", "--columns", "4", "--out", str(tmp_path / "grid.png")]) == 0
    G = load_generator(str(tmp_path / "minegan.pt"))
    z = seeded_z([0, 1, 2, 3], G.style_dim)
    with torch.no_grad():
        expected = image_grid(G(miner(z), noise="const"), columns=4)
    assert list(Image.open(tmp_path / "grid.png").convert("RGB").getdata()) == list(expected.convert("RGB").getdata())


def test_sample_and_export(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2)
    assert main(["sample", "--generator", str(tmp_path / "run"), "--seeds", "0-3", "--pair-with", source, "--columns", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (4 * 34 + 2, 2 * 34 + 2)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "adapted.pt")]) == 0
    z = torch.randn(2, 16)
    assert torch.equal(load_generator(str(tmp_path / "adapted.pt"))(z, noise="const"), load_generator(str(tmp_path / "run"))(z, noise="const"))


def test_sample_of_a_checkpoint_directory_draws_that_checkpoint(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 4)
    checkpoint = tmp_path / "run" / "checkpoint_000002"
    assert main(["sample", "--generator", str(checkpoint), "--seeds", "0-3", "--columns", "4", "--out", str(tmp_path / "grid.png")]) == 0
    G = load_generator(str(checkpoint / "state.pt"))
    with torch.no_grad():
        expected = image_grid(G(seeded_z([0, 1, 2, 3], G.style_dim), noise="const"), columns=4)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), np.asarray(expected.convert("RGB")))
    assert not torch.equal(load_generator(str(checkpoint)).state_dict()["to_rgbs.0.conv.weight"], load_generator(str(tmp_path / "run")).state_dict()["to_rgbs.0.conv.weight"])


def test_adapt_to_an_s3_bucket_that_does_not_exist_is_one_error_line_naming_it(tmp_path: Path, capsys, s3_endpoint: str):
    assert adapt(write_tiny_source(tmp_path / "source.pt"), "toy:sketch", "s3://missing-bucket/x", 1) == 2
    err = capsys.readouterr().err
    assert err == "fsg adapt: error: S3 bucket 'missing-bucket' does not exist (while accessing s3://missing-bucket/x)\n"


def test_adapt_with_no_s3_endpoint_reachable_is_one_error_line_naming_the_uri_and_the_cause(tmp_path: Path, capsys, unreachable_s3_endpoint: str):
    assert adapt(write_tiny_source(tmp_path / "source.pt"), "toy:sketch", "s3://missing-bucket/x", 1) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fsg adapt: error: s3://missing-bucket/x: cannot reach the S3 endpoint {unreachable_s3_endpoint}: ")
    assert "Could not connect" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "MISSING"], "MISSING"),
        (["--target", "toy:cats"], "toy:cats"),
        (["--set", "cdc.wieght=5"], "cdc.wieght: unknown key"),
        (["--set", "anchors.count=0"], "anchors.count: expected a positive integer, got 0"),
        (["--method", "dcgan"], "dcgan"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_it(tmp_path: Path, capsys, args: list[str], message: str):
    source = write_tiny_source(tmp_path / "source.pt")
    argv = ["adapt", "--source", source, "--target", "toy:sketch", "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"]
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_corrupt_source_checkpoint_is_named(tmp_path: Path, capsys):
    (tmp_path / "source.pt").write_bytes(b"not a checkpoint")
    assert adapt(str(tmp_path / "source.pt"), "toy:sketch", tmp_path / "run", 1) == 2
    assert "source.pt: not a readable torch checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nosuch"], "method: unknown 'nosuch'; available: ada, adam, bsa, cdc, ewc, freezed, minegan, rick, tgan"),
        (["--target", "MISSING"], "MISSING"),
        (["--set", "anchors.patch_levels=4"], "anchors.patch_levels: the 32px discriminator has 3 patch maps"),
        (["--method", "freezed", "--set", "baselines.freeze_d_blocks=9"], "baselines.freeze_d_blocks: the 32px discriminator has 3 residual blocks, got 9"),
    ],
)
def test_bad_input_to_a_ray_run_is_refused_before_ray_starts(tmp_path: Path, capsys, monkeypatch, args: list[str], message: str):
    from fsg_ray.ray import train

    monkeypatch.setattr(train, "connect", lambda **_: pytest.fail("Ray was started"))
    argv = ["adapt", "--source", write_tiny_source(tmp_path / "source.pt"), "--target", "toy:sketch", "--out", str(tmp_path / "run"), "--workers", "2", "--quiet"]
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_ray_run_resumed_under_another_config_is_refused_before_ray_starts(tmp_path: Path, capsys, monkeypatch):
    from fsg_ray.ray import train

    source = write_tiny_source(tmp_path / "source.pt")
    adapt(source, "toy:sketch", tmp_path / "run", 2)
    monkeypatch.setattr(train, "connect", lambda **_: pytest.fail("Ray was started"))
    assert adapt(source, "toy:sketch", tmp_path / "run", 4, "--workers", "2", "--set", "cdc.weight=5") == 2
    assert "cannot resume, config cdc.weight was 1000.0, now 5.0" in capsys.readouterr().err
