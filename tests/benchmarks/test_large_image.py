"""benchmarks/large_image.py: its mode syntax, and a tiny end-to-end run (each mode in its own
process) whose exact-tiling output must equal the whole image's and whose --repeat rows must
carry the compiled calls' times and their ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import large_image as bench  # noqa: E402


def test_mode_syntax():
    assert bench.parse_mode("whole") == {"mode": "whole", "tile": 0}
    assert bench.parse_mode("exact:512:spill")["spill"] is True
    assert bench.parse_mode("approx-image-stats:256:64:128")["stats_size"] == 128
    for bad in ("exact", "exact:x", "exact:512:disk", "tiles:512"):
        with pytest.raises(ValueError, match="--modes"):
            bench.parse_mode(bad)


def test_tiny_run_is_exact_and_reports_compiled_calls(tmp_path, official_weights, sots_mini):
    image = sorted((sots_mini / "hazy").iterdir())[0]
    out = tmp_path / "li"
    args = ["--weights", str(official_weights), "--image", str(image), "--sizes", "40x62",
            "--modes", "whole,exact:16,exact:16:spill", "--repeat", "2", "--output", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    rows = {r["mode"]: r for r in json.loads((out / "large_image.json").read_text())["runs"]}
    assert set(rows) == {"whole", "exact:16", "exact:16:spill"}
    for mode, r in rows.items():
        assert len(r["seconds_warm"]) == 2 and r["seconds_warm_median"] > 0, mode
    for mode in ("exact:16", "exact:16:spill"):
        r = rows[mode]
        assert r["compared_with"] == "whole"
        # float32 through ~60 stages whose statistics are merged in another order: 1e-4 of the range
        assert r["max_abs_diff"] <= 1e-4
        assert r["warm_time_ratio"] == pytest.approx(r["seconds_warm_median"] / rows["whole"]["seconds_warm_median"])
    md = (out / "large_image.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| size"))
    body = [line for line in md if line.startswith("| 40x62")]
    assert len(body) == 3 and all(line.count("|") == header.count("|") for line in body)
    assert "median of the 2 further calls" in md[0]
