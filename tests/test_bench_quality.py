"""bench/quality.py: its own section of bench/RESULTS.md only, rows ranked by KID per target, grids through the source's noise."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tiny import write_minegan_run, write_tiny_source
from torchvision.utils import make_grid

from fsg_ray.eval.results import EvalResult, EvalSettings
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


def test_a_bad_override_is_refused_naming_the_key(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        quality.parse_args(["--set", "rick.warmup_stpes=50"])
    assert "--set: " in (err := capsys.readouterr().err) and "rick.warmup_stpes" in err
    assert quality.parse_args(["--set", "rick.warmup_steps=50", "--set", "adam.probe_steps=100"]).set == ["rick.warmup_steps=50", "adam.probe_steps=100"]


def test_an_override_of_a_key_the_bench_sets_per_run_is_refused_naming_its_flag(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        quality.parse_args(["--set", "method=tgan"])
    assert "--set method=tgan: the bench sets method for each run; use --methods" in capsys.readouterr().err


def test_overrides_reach_the_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = []
    monkeypatch.setattr(quality, "run_adaptation", lambda spec, sink, progress: seen.append(spec.config))
    quality.adapt("toy:faces", "toy:sketch", "rick", 20, 0, ["rick.warmup_steps=5"], tmp_path / "run")
    assert seen[0].rick.warmup_steps == 5 and seen[0].method == "rick" and seen[0].steps == 20


def test_the_methods_grid_samples_a_minegan_run_through_its_miner(tmp_path: Path):
    source = write_tiny_source(tmp_path / "source.pt")
    miner = write_minegan_run(tmp_path / "minegan.pt")
    grid = quality.methods_grid(source, "toy:sunglasses", {"minegan": str(tmp_path / "minegan.pt")})
    G = load_generator(source)
    z = seeded_z(quality.GRID_SEEDS, G.style_dim)
    noise = G.noises.as_list()
    with torch.no_grad():
        rows = [G(z, noise=noise), G(miner(z), noise=noise)]
    expected = make_grid(torch.cat(rows).clamp(-1, 1), nrow=len(quality.GRID_SEEDS), padding=2, pad_value=1.0)
    assert torch.equal(grid, expected)


def _row(target: str, method: str, metrics: dict[str, float], not_defined: dict[str, str] | None = None, intervals: dict | None = None) -> "quality.Row":
    result = EvalResult("g", f"toy:{target}", "toy:faces", None, metrics, intervals or {}, not_defined or {}, {}, EvalSettings())
    return quality.Row(target, method, 100, result, 1.0)


def test_rows_are_ranked_by_kid_within_their_target():
    rows = [
        _row("sketch", quality.SOURCE_ROW, {"kid": 0.30}),
        _row("sketch", "cdc", {"kid": 0.05}),
        _row("sketch", "tgan", {"kid": 0.10}),
        _row("babies", "cdc", {"kid": 0.02}),
        _row("babies", "tgan", {"kid": 0.01}),
    ]
    assert quality.ranks(rows) == {0: "3", 1: "1", 2: "2", 3: "2", 4: "1"}


def test_a_rank_whose_kid_interval_overlaps_the_one_above_is_marked_unresolved():
    rows = [
        _row("sketch", "cdc", {"kid": 0.05}, intervals={"kid": (0.04, 0.07)}),
        _row("sketch", "tgan", {"kid": 0.08}, intervals={"kid": (0.06, 0.10)}),
        _row("sketch", "freezed", {"kid": 0.20}, intervals={"kid": (0.15, 0.25)}),
    ]
    assert quality.ranks(rows) == {0: "1", 1: "2≈", 2: "3"}
    assert "| sketch | cdc | 1 | 0.0500 [0.0400, 0.0700] |" in quality.format_table(rows)


def test_table_says_why_a_cell_is_empty():
    source = _row("sketch", quality.SOURCE_ROW, {"kid": 0.3}, {"corr_edge_ratio": "G_t(z) equals G_s(z) for every z (the generator is its source)"})
    adapted = _row("sketch", "cdc", {"kid": 0.1, "corr_edge_ratio": 2.5}, {"fid": "FID needs more than 2048 samples"})
    table = quality.format_table([source, adapted])
    assert "| sketch | source (no adaptation) | 2 | 0.3000 | inf, is the source |" in table
    assert "| sketch | cdc | 1 | 0.1000 | 2.5000 |" in table


def test_a_saved_row_reads_back_as_the_same_result():
    result = _row("sketch", "cdc", {"kid": 0.1}, {"fid": "too few"}, {"kid": (0.05, 0.15)}).result
    assert quality._result_from_json(result.to_json()) == result


def test_a_saved_row_of_another_model_under_the_same_source_name_is_not_reused(tmp_path: Path):
    first, second = tmp_path / "a" / "source.pt", tmp_path / "b" / "source.pt"
    write_tiny_source(first, seed=0)
    write_tiny_source(second, seed=1)
    args = quality.parse_args(["--source", str(first), "--out", str(tmp_path / "out")])
    saved = {"source": str(first), "source_digest": quality.source_digest(str(first)), "seed": 0, "overrides": [], "settings": quality.asdict(quality.settings_of(args))}
    assert quality.reusable(saved, args, adapted=True)
    assert not quality.reusable({**saved, "source_digest": quality.source_digest(str(second))}, args, adapted=True)
    assert not quality.reusable({key: value for key, value in saved.items() if key != "source_digest"}, args, adapted=True)
    assert not quality.reusable({**saved, "overrides": ["cdc.weight=10"]}, args, adapted=True)
    assert quality.reusable({**saved, "overrides": ["cdc.weight=10"]}, args, adapted=False)
