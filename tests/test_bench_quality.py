"""bench/quality.py rewrites only its own section of bench/RESULTS.md, which other benchmarks share."""

import importlib.util
import sys
from pathlib import Path

import pytest

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
