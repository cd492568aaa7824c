"""Reading the user's target images: folder, zip and Parquet sources, validation, few-shot sampling."""

import io
import warnings
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fsg_ray.data.images import (
    FewShotImages,
    TargetDataError,
    load_eval_set,
    load_images,
    load_target,
    warn_if_few,
)


def _png(mode: str = "RGB", size: tuple[int, int] = (40, 30), color=(200, 30, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(tmp_path, files: dict[str, bytes]):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_folder_images_load_sorted_at_size_in_range(tmp_path):
    _folder(tmp_path, {"b.png": _png(color=(0, 0, 0)), "a.jpg": _png(color=(255, 255, 255))})
    images = load_images(tmp_path, 16)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images[0].min() > 0.9 and images[1].max() < -0.9  # a.jpg (white) first, then b.png (black)


def test_corrupt_file_is_named_in_error(tmp_path):
    _folder(tmp_path, {"good.png": _png(), "broken.png": b"this is not an image"})
    with pytest.raises(TargetDataError, match=r"broken\.png.*not a readable image"):
        load_images(tmp_path, 16)


def test_zero_byte_file_is_named_in_error(tmp_path):
    _folder(tmp_path, {"good.png": _png(), "empty.png": b""})
    with pytest.raises(TargetDataError, match=r"empty\.png.*zero bytes"):
        load_images(tmp_path, 16)


def test_truncated_file_is_named_in_error(tmp_path):
    data = _png(size=(64, 64), color=None)
    _folder(tmp_path, {"cut.png": data[: len(data) // 2]})
    with pytest.raises(TargetDataError, match=r"cut\.png.*truncated"):
        load_images(tmp_path, 16)


def test_every_bad_file_is_counted_and_the_first_named(tmp_path):
    _folder(tmp_path, {"a.png": b"", "b.png": b"junk", "c.png": _png()})
    with pytest.raises(TargetDataError, match=r"a\.png: zero bytes \(and 1 more bad image"):
        load_images(tmp_path, 16)


def test_grayscale_loads_as_three_equal_channels(tmp_path):
    _folder(tmp_path, {"gray.png": _png("L", color=128)})
    images = load_images(tmp_path, 8)
    assert images.shape == (1, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert abs(float(images.mean()) - (128 / 127.5 - 1)) < 1e-6


def test_rgba_is_composited_on_white(tmp_path):
    _folder(tmp_path, {"clear.png": _png("RGBA", color=(0, 0, 0, 0)), "solid.png": _png("RGBA", color=(0, 0, 255, 255))})
    clear, solid = load_images(tmp_path, 8)
    assert clear.shape == (3, 8, 8) and torch.all(clear == 1.0)
    assert torch.all(solid[2] == 1.0) and torch.all(solid[:2] == -1.0)


def test_shorter_side_is_resized_then_centre_cropped(tmp_path):
    wide = np.zeros((40, 160, 3), dtype=np.uint8)
    wide[:, 40:120] = 255  # white centre, black sides: squashing instead of cropping would show them
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    _folder(tmp_path, {"wide.png": buffer.getvalue()})
    image = load_images(tmp_path, 10)[0]
    assert image.shape == (3, 10, 10)
    assert torch.allclose(image, torch.ones_like(image), atol=1e-2)  # only the white square survives


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    _folder(tmp_path, {"a.png": _png(), ".b.png": b"junk", "notes.txt": b"hello"})
    assert len(load_images(tmp_path, 8)) == 1


def test_zip_source(tmp_path):
    archive = tmp_path / "shots.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("shots/b.png", _png(color=(0, 0, 0)))
        zf.writestr("shots/a.png", _png(color=(255, 255, 255)))
        zf.writestr("__MACOSX/shots/._a.png", b"resource fork")
    images = load_images(archive, 8)
    assert images.shape == (2, 3, 8, 8) and images[0].min() > 0.9


def test_zip_member_is_named_in_error(tmp_path):
    archive = tmp_path / "shots.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("shots/bad.jpg", b"junk")
    with pytest.raises(TargetDataError, match=r"shots\.zip:shots/bad\.jpg"):
        load_images(archive, 8)


def test_parquet_binary_column_is_found(tmp_path):
    path = tmp_path / "shots.parquet"
    pq.write_table(pa.table({"label": [0, 1], "img": pa.array([_png(), _png("L", color=7)], pa.binary())}), path)
    assert load_images(path, 8).shape == (2, 3, 8, 8)


def test_parquet_huggingface_image_struct(tmp_path):
    path = tmp_path / "hf.parquet"
    rows = [{"bytes": _png(), "path": "a.png"}, {"bytes": _png(), "path": "b.png"}]
    pq.write_table(pa.table({"image": rows, "text": ["x", "y"]}), path)
    assert load_images(path, 8).shape == (2, 3, 8, 8)


def test_parquet_bad_row_is_named_by_index(tmp_path):
    path = tmp_path / "shots.parquet"
    pq.write_table(pa.table({"img": pa.array([_png(), b"junk"], pa.binary())}), path)
    with pytest.raises(TargetDataError, match=r"shots\.parquet row 1"):
        load_images(path, 8)


def test_parquet_with_two_image_columns_needs_column(tmp_path):
    path = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": pa.array([_png()], pa.binary()), "b": pa.array([b"junk"], pa.binary())}), path)
    with pytest.raises(TargetDataError, match="pass column="):
        load_images(path, 8)
    assert load_images(path, 8, column="a").shape == (1, 3, 8, 8)


def test_empty_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(TargetDataError, match=rf"{tmp_path}: no images found"):
        load_images(tmp_path, 8)


def test_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(TargetDataError, match="nowhere: no such file"):
        load_images(tmp_path / "nowhere", 8)


def test_toy_spec_loads_the_few_shot_set():
    assert load_target("toy:sketch", 16).shape == (10, 3, 16, 16)
    assert load_eval_set("toy:babies", 16, n=3).shape == (3, 3, 16, 16)


def test_unknown_toy_spec_lists_valid_names():
    with pytest.raises(TargetDataError, match="toy:faces"):
        load_target("toy:cats", 16)


def test_warn_if_few_warns_below_anchor_count():
    with pytest.warns(UserWarning, match="only 3 target image"):
        warn_if_few(torch.zeros(3, 3, 4, 4), n_anchors=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_few(torch.zeros(10, 3, 4, 4), n_anchors=10)


def test_sample_is_deterministic_for_a_seeded_generator():
    shots = FewShotImages(torch.randn(10, 3, 4, 4))
    first = shots.sample(16, torch.Generator().manual_seed(3))
    again = shots.sample(16, torch.Generator().manual_seed(3))
    assert first.shape == (16, 3, 4, 4) and torch.equal(first, again)


def test_sample_flips_about_half_the_draws():
    image = torch.arange(4.0).expand(1, 3, 4, 4)  # left-right ramp: flipped iff it decreases
    drawn = FewShotImages(image).sample(400, torch.Generator().manual_seed(0))
    flipped = drawn[:, 0, 0, 0] == 3
    assert torch.all(flipped | (drawn[:, 0, 0, 0] == 0))
    assert 150 < int(flipped.sum()) < 250
