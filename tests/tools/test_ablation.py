"""minet_jax.tools.ablation: Table 2's and Fig. 8's runs, their configs, the report's orderings."""

import json

import numpy as np
import pytest
from flax import nnx

from minet_jax.config import apply_overrides, load_config, model_config
from minet_jax.model import MINet, count_params
from minet_jax.tools import ablation


def _args(tmp_path, tiny_data, *extra):
    synth, tfds = tiny_data
    return [
        "--preset", "tiny", "--output", str(tmp_path / "ab"), "--train-data", str(synth / "train"),
        "--val-data", str(synth / "val"), "--set", f"data.data_dir={tfds}", *extra,
    ]  # fmt: skip


def test_paper_variant_overrides_build_the_paper_model(tmp_path):
    """The overrides on configs/default.py give config.model_config("paper") exactly."""
    o = ablation.run_overrides({}, ablation.PRESETS["cpu"], tmp_path, tmp_path)
    model = apply_overrides(load_config("default"), list(o.items())).model.to_dict()
    assert model == model_config("paper").to_dict()


@pytest.mark.parametrize("column", list(ablation.COLUMNS))
def test_every_column_is_a_valid_run_with_its_own_parameter_count(column, tmp_path):
    o = ablation.run_overrides(ablation.COLUMNS[column][0], ablation.PRESETS["tiny"], tmp_path, tmp_path)
    cfg = apply_overrides(load_config("default"), list(o.items()))
    assert cfg.model.solver.forward == cfg.model.solver.backward == "unrolled" and cfg.data.name == "paired"
    im = ablation.run_overrides({}, ablation.PRESETS["tiny"], tmp_path, tmp_path)
    base = apply_overrides(load_config("default"), list(im.items()))
    n = count_params(nnx.eval_shape(lambda: MINet(cfg.model, rngs=nnx.Rngs(0))))
    n_im = count_params(nnx.eval_shape(lambda: MINet(base.model, rngs=nnx.Rngs(0))))
    # resblockT holds T blocks of weights; removing MLF or the attention removes parameters.
    assert (n == n_im) == (column in ("im", "resblock1"))


def test_the_sweep_run_equal_to_a_column_is_trained_once(tmp_path):
    p = ablation.plan(["resblock1", "im"], [1, 12, 16], ablation.PRESETS["cpu"], tmp_path, tmp_path)
    assert p["columns"] == {"resblock1": "resblock1", "im": "im"}
    assert p["sweep"] == {1: "T1", 12: "im", 16: "T16"}  # the paper's T is the im column's run
    assert sorted(p["runs"]) == ["T1", "T16", "im", "resblock1"]


def test_orderings_follow_the_measured_psnr():
    report = {
        "columns": {c: c for c in ablation.COLUMNS},
        "sweep": {"1": "T1", "12": "im"},
        "runs": {c: {"analysis": {"val_psnr": 20.0 + i}} for i, c in enumerate(ablation.COLUMNS)},
        "inference": {"seconds": {"im": 1.0, "T1": 0.2}},
    }
    report["runs"]["T1"] = {"analysis": {"val_psnr": 30.0}}
    got = {(c["better"], c["worse"]): c for c in ablation.orderings(report)}
    # COLUMNS' order gives PSNR resblock1 20 < resblockT 21 < no_mlf 22 < no_attention 23 < oa 24 < im 25
    assert got[("im", "resblockT")]["holds"] and got[("im", "resblockT")]["here_db"] == pytest.approx(4.0)
    assert got[("im", "no_mlf")]["paper_db"] == pytest.approx(35.51 - 34.63)
    assert got[("T12", "T1")]["holds"] is False  # T1 scored above the T=12 run here
    md = ablation.markdown({**report, "machine": {"cpu": "x", "backend": "cpu", "cpu_count": 2, "jax": "0"},
                            "preset_name": "tiny", "preset": ablation.PRESETS["tiny"], "train_data": "t", "val_data": "v"})  # fmt: skip
    assert "- PSNR rises with T (Fig. 8): does not hold" in md and "| im | im | - | - | 25.00 |" in md
    assert "| 1 | T1 | - | 30.00 | - | - | 0.200 |" in md  # the alternated timing, per run
    assert ablation.sweep_curve(report)["infer_s"] == [0.2, 1.0]


def test_table2_bars_are_against_im_in_the_papers_order():
    """Whatever order --columns gave, each bar is a column less im (the network it ablates)."""
    psnr = {"no_attention": 17.0, "im": 18.0, "resblock1": 16.5, "oa": 19.0}
    report = {"columns": {c: c for c in psnr}, "runs": {c: {"analysis": {"val_psnr": v}} for c, v in psnr.items()}}
    names, here, paper = ablation.table2_bars(report)
    assert names == ["resblock1", "no_attention", "oa", "im"]
    assert here == pytest.approx([-1.5, -1.0, 1.0, 0.0])
    assert paper == pytest.approx([32.61 - 35.51, 34.92 - 35.51, 35.31 - 35.51, 0.0])
    del report["runs"]["im"]
    assert ablation.table2_bars(report) == ([], [], [])


def test_tiny_ablation_trains_once_per_config_and_reports(tmp_path, tiny_data):
    # tiny's network is T = 2: the im column and the sweep's T = 2 are one run.
    assert ablation.main(_args(tmp_path, tiny_data, "--columns", "im", "--sweep", "2")) == 0
    out = tmp_path / "ab"
    report = json.loads((out / "ablation.json").read_text())
    assert list(report["runs"]) == ["im"] and report["sweep"] == {"2": "im"}
    a = report["runs"]["im"]["analysis"]
    cfg = apply_overrides(load_config("default"), list(report["runs"]["im"]["overrides"].items()))
    assert a["params"] == count_params(nnx.eval_shape(lambda: MINet(cfg.model, rngs=nnx.Rngs(0))))
    assert a["val_images"] == 2 and np.isfinite(a["val_psnr"])
    inf = json.loads((out / "inference.json").read_text())
    assert report["inference"] == inf and inf["seconds"]["im"] > 0 and inf["repeats"] == 1
    assert inf["checkpoints"] == {"im": json.loads((out / "runs" / "im" / "summary.json").read_text())["last_checkpoint"]}
    assert cfg.model.rca == "features" and cfg.model.mlf_groups == 3  # the paper variant
    assert "| 2 | im | done |" in (out / "ablation.md").read_text() and (out / "ablation.png").stat().st_size > 0
    # A rerun resumes: nothing trained or timed again (the same measured seconds come back).
    assert ablation.main(_args(tmp_path, tiny_data, "--columns", "im", "--sweep", "2")) == 0
    assert json.loads((out / "inference.json").read_text()) == inf


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for argv, msg in (
        (["--output", str(tmp_path), "--columns", "im,resblok"], "--columns: unknown resblok"),
        (["--output", str(tmp_path), "--sweep", "4,x"], "--sweep '4,x'"),
        (["--output", str(tmp_path), "--sweep", "0"], "T must be >= 1"),
        (["--output", str(tmp_path), "--val-data", str(tmp_path / "nope")], "--val-data"),
    ):
        with pytest.raises(SystemExit) as e:
            ablation.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
