"""Checkpoint files: the field's `.pt` forms, fsg-ray's own, run directories, S3, and the errors that name the fault."""

from pathlib import Path

import pytest
import torch
from tiny import TINY, tiny_source

from fsg_ray import load_discriminator, load_generator, storage
from fsg_ray.nets.checkpoints import (
    CheckpointError,
    CheckpointMismatch,
    checkpoint_dir_name,
    export_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def images(uri: str, which: str = "g_ema") -> torch.Tensor:
    z = torch.randn(3, TINY.style_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return load_generator(uri, which)(z, noise="const")


def field_file(path: Path, **changes) -> str:
    state = {k: tiny_source()[k] for k in ("g", "g_ema", "d")}
    state.update(changes)
    torch.save(state, path)
    return str(path)


def test_field_file_loads_with_the_architecture_inferred_from_shapes(tmp_path: Path):
    ckpt = read_checkpoint(field_file(tmp_path / "source.pt"))
    assert ckpt["model"]["size"] == TINY.size and ckpt["model"]["style_dim"] == TINY.style_dim
    assert ckpt["model"]["n_mlp"] == TINY.n_mlp and ckpt["model"]["channel_max"] == TINY.channel_max


def test_export_then_load_gives_identical_images(tmp_path: Path):
    source = field_file(tmp_path / "source.pt")
    keys = export_checkpoint(source, str(tmp_path / "exported.pt"))
    assert keys == ["g", "g_ema", "d"]
    assert torch.equal(images(source), images(str(tmp_path / "exported.pt")))
    assert torch.equal(images(source, "g"), images(str(tmp_path / "exported.pt"), "g"))


def test_exported_file_is_plain_tensors_under_the_field_keys(tmp_path: Path):
    export_checkpoint(field_file(tmp_path / "source.pt"), str(tmp_path / "exported.pt"))
    raw = torch.load(tmp_path / "exported.pt", weights_only=True)
    assert sorted(raw) == ["d", "g", "g_ema"]
    assert all(isinstance(t, torch.Tensor) for state in raw.values() for t in state.values())


def test_g_ema_only_file_with_module_prefix_loads(tmp_path: Path):
    prefixed = {f"module.{k}": v for k, v in tiny_source()["g_ema"].items()}
    torch.save({"g_ema": prefixed}, tmp_path / "ema.pt")
    assert torch.equal(images(str(tmp_path / "ema.pt")), images(field_file(tmp_path / "full.pt")))


def test_one_wrong_shape_is_named(tmp_path: Path):
    g = dict(tiny_source()["g_ema"])
    g["to_rgbs.1.bias"] = torch.zeros(1, 3, 2, 2)
    with pytest.raises(CheckpointMismatch, match=r"to_rgbs\.1\.bias: expected \[1, 3, 1, 1\], got \[1, 3, 2, 2\]"):
        load_generator(field_file(tmp_path / "bad.pt", g_ema=g))


def test_one_missing_key_is_named(tmp_path: Path):
    g = dict(tiny_source()["g_ema"])
    del g["convs.0.noise.weight"]
    with pytest.raises(CheckpointMismatch, match=r"missing key convs\.0\.noise\.weight"):
        load_generator(field_file(tmp_path / "bad.pt", g_ema=g))


def test_one_unexpected_key_is_named(tmp_path: Path):
    d = {**tiny_source()["d"], "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatch, match=r"unexpected key extra\.weight"):
        load_discriminator(field_file(tmp_path / "bad.pt", d=d))


def test_truncated_file_is_named(tmp_path: Path):
    data = (Path(field_file(tmp_path / "full.pt"))).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable torch checkpoint"):
        load_generator(str(tmp_path / "cut.pt"))


def test_zero_byte_file_is_named(tmp_path: Path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: empty file"):
        load_generator(str(tmp_path / "empty.pt"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path):
    torch.save({"g_ema": tiny_source()["g_ema"], "hook": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled.pt: not a readable torch checkpoint"):
        load_generator(str(tmp_path / "pickled.pt"))


def test_a_dict_without_networks_lists_its_keys(tmp_path: Path):
    torch.save({"optimizer": {}, "args": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: none of the keys .* found; keys are \['args', 'optimizer'\]"):
        load_generator(str(tmp_path / "other.pt"))


def test_run_directory_loads_its_latest_checkpoint(tmp_path: Path):
    early, late = tiny_source(seed=0), tiny_source(seed=1)
    for step, ckpt in ((100, early), (1000, late)):
        write_checkpoint(str(tmp_path / "run" / checkpoint_dir_name(step) / "state.pt"), ckpt)
    assert torch.equal(images(str(tmp_path / "run")), images(field_file(tmp_path / "late.pt", **{k: late[k] for k in ("g", "g_ema", "d")})))


def test_checkpoint_directory_loads_that_checkpoint_not_the_runs_latest(tmp_path: Path):
    early, late = tiny_source(seed=0), tiny_source(seed=1)
    for step, ckpt in ((400, early), (1000, late)):
        write_checkpoint(str(tmp_path / "run" / checkpoint_dir_name(step) / "state.pt"), ckpt)
    early_file = field_file(tmp_path / "early.pt", **{k: early[k] for k in ("g", "g_ema", "d")})
    assert torch.equal(images(str(tmp_path / "run" / "checkpoint_000400")), images(early_file))


def test_s3_checkpoint_directory_loads_that_checkpoint(s3_bucket: str, tmp_path: Path):
    run = f"s3://{s3_bucket}/runs/a"
    write_checkpoint(storage.join(run, checkpoint_dir_name(400), "state.pt"), tiny_source(seed=0))
    write_checkpoint(storage.join(run, checkpoint_dir_name(1000), "state.pt"), tiny_source(seed=1))
    assert torch.equal(images(storage.join(run, "checkpoint_000400")), images(field_file(tmp_path / "early.pt")))


def test_directory_without_checkpoints_is_an_error_naming_it(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"run: a directory with neither state\.pt nor checkpoint_\* subdirectories"):
        load_generator(str(tmp_path / "run"))


def test_unknown_shipped_model_lists_the_shipped_ones():
    with pytest.raises(CheckpointError, match="toy:cats: no such shipped model; shipped: toy:faces"):
        load_generator("toy:cats")


def test_s3_run_round_trip(s3_bucket: str, tmp_path: Path):
    run = f"s3://{s3_bucket}/runs/a"
    write_checkpoint(storage.join(run, checkpoint_dir_name(5), "state.pt"), tiny_source())
    assert torch.equal(images(run), images(field_file(tmp_path / "local.pt")))
    export_checkpoint(run, f"s3://{s3_bucket}/exported.pt")
    assert torch.equal(images(f"s3://{s3_bucket}/exported.pt"), images(run))


def test_missing_s3_bucket_is_named(s3_endpoint: str):
    with pytest.raises(storage.StorageError, match="no-such-bucket"):
        load_generator("s3://no-such-bucket/run")
