"""bench/quality.py rewrites only its own section of bench/RESULTS.md, which other benchmarks share."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tiny import write_minegan_run, write_tiny_source
from torchvision.utils import make_grid

from fsg_ray.grids import seeded_z
from fsg_ray.nets.checkpoints import load_generator

_spec = importlib.util.spec_from_file_location("bench_quality", Path(__file__).parents[1] / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_spec)
sys.modules["bench_quality"] = quality  # dataclasses look their module up there
_spec.loader.exec_module(quality)


def test_refreshing_the_quality_section_keeps_the_sections_around_it():
    text = "# Benchmark results\n\n## train step\n\nfast\n\n## quality (toy benchmark)\n\nold table\n\n## serve\n\nslow\n"
    refreshed = quality.replace_section(text, quality.SECTION, "new table")
    assert refreshed == "# Benchmark results\n\n## train step\n\nfast\n\n## quality (toy benchmark)\n\nnew table\n\n## serve\n\nslow\n"


def test_the_quality_section_is_appended_when_absent():
    refreshed = quality.replace_section("# Benchmark results\n\n## serve\n\nslow\n", quality.SECTION, "table")
    assert refreshed == "# Benchmark results\n\n## serve\n\nslow\n\n## quality (toy benchmark)\n\ntable\n"


def test_unknown_method_or_target_is_named():
    with pytest.raises(SystemExit, match="unknown 'dcd'"):
        quality.parse_args(["--methods", "cdc,dcd"])
    with pytest.raises(SystemExit, match="unknown 'cats'"):
        quality.parse_args(["--targets", "cats"])


def test_the_methods_grid_samples_a_minegan_run_through_its_miner(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    miner = write_minegan_run(tmp_path / "minegan.pt")
    grid = quality.methods_grid(source, "sunglasses", {"minegan": str(tmp_path / "minegan.pt")})
    G = load_generator(source)
    z = seeded_z(quality.GRID_SEEDS, G.style_dim)
    with torch.no_grad():
        rows = [G(z, noise="const"), G(miner(z), noise="const")]
    expected = make_grid(torch.cat(rows).clamp(-1, 1), nrow=len(quality.GRID_SEEDS), padding=2, pad_value=1.0)
    assert torch.equal(grid, expected)

