"""benchmarks/default_recipe_seeds.py: its per-recipe means, spreads and paired differences, and
its recipe syntax (the trainings themselves are train.py's, tested in tests/test_train.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import default_recipe_seeds as study  # noqa: E402

# (recipe, seed) -> final validation PSNR of a stand-in run; the hazy input is 15 dB throughout
PSNR = {("base", 0): 21.0, ("base", 1): 20.0, ("fast", 0): 21.5, ("fast", 1): 19.9}


def fake_run(workdir: Path, overrides: list[str], seed: int) -> dict:
    name = workdir.name.rsplit("_s", 1)[0]
    assert overrides == ({"base": [], "fast": ["adam_b2=0.99", "lr=1e-3"]}[name])
    p = PSNR[name, seed]
    return {"seed": seed, "val_psnr": p, "gain_db": p - 15.0, "input_psnr": 15.0, "wall_time_s": 1.0, "val_curve": [p]}


def test_summary_statistics_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "run", fake_run)
    args = ["--output", str(tmp_path), "--recipe", "base=", "--recipe", "fast=adam_b2=0.99,lr=1e-3", "--seeds", "0,1"]
    assert study.main(args) == 0
    result = json.loads((tmp_path / "default_recipe_seeds.json").read_text())
    base, fast = result["recipes"]
    assert base["mean_psnr"] == pytest.approx(20.5) and base["spread_db"] == pytest.approx(1.0)
    assert base["paired_diff_db"] == pytest.approx(0.0)
    assert fast["mean_gain_db"] == pytest.approx(5.7) and fast["spread_db"] == pytest.approx(1.6)
    assert fast["paired_diff_db"] == pytest.approx((0.5 - 0.1) / 2)
    md = (tmp_path / "default_recipe_seeds.md").read_text()
    assert "| fast | adam_b2=0.99 lr=1e-3 | 1 | 19.900 | +4.90 |" in md


def test_a_recipe_without_a_name_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(["--output", str(tmp_path), "--recipe", "adam_b2"])
    assert "expected NAME=KEY=VALUE" in capsys.readouterr().err
