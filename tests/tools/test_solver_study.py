"""minet_jax.tools.solver_study: the tiny preset end to end, resuming, and the runs' configs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from minet_jax.config import apply_overrides, load_config
from minet_jax.tools import solver_study


def _args(tmp_path, tiny_data, runs, *extra):
    synth, tfds = tiny_data
    return [
        "--preset", "tiny", "--output", str(tmp_path / "study"), "--tracks", "scratch", "--runs", runs,
        "--train-data", str(synth / "train"), "--val-data", str(synth / "val"), "--set", f"data.data_dir={tfds}", *extra,
    ]  # fmt: skip


def test_tiny_study_trains_analyses_and_resumes(tmp_path, tiny_data):
    # Part 1 stops the DEQ run at step 1, as an interrupted study would have.
    assert solver_study.main(_args(tmp_path, tiny_data, "deq", "--set", "num_steps=1")) == 0
    first = json.loads((tmp_path / "study" / "solver_study.json").read_text())
    assert first["tracks"]["scratch"]["deq"]["analysis"]["step"] == 1
    # Part 2: the same study in full; the run trains on from its step-1 checkpoint.
    assert solver_study.main(_args(tmp_path, tiny_data, "deq")) == 0
    out = tmp_path / "study"
    r = json.loads((out / "solver_study.json").read_text())["tracks"]["scratch"]["deq"]
    assert r["status"] == "done"
    workdir = out / "scratch" / "deq"
    assert "resumed from" in (workdir / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # each step once: continued, not restarted
    a = r["analysis"]
    assert a["step"] == 2 and a["val_images"] == 2  # analysed again after training on
    assert np.isfinite(a["val_psnr"]) and 0 < a["val_ssim"] <= 1
    assert r["median_step_s"] > 0 and r["peak_rss_bytes"] > 100 * 2**20
    # the step alone, measured by bench in its own process at the run's solver and budget
    assert r["step_bench"]["median_s"] > 0 and r["step_bench"]["rss_steps_peak_bytes"] > 100 * 2**20
    bench = json.loads((workdir / "step_bench" / "bench.json").read_text())["training"][0]
    assert (bench["pair"], bench["crop"], bench["batch"], bench["T"]) == ("anderson/implicit", 16, 2, 2)
    # timed at the run's own weights on its own training data, with the iterations that took
    summary = json.loads((workdir / "summary.json").read_text())
    assert bench["init_from"] == summary["last_checkpoint"] and bench["data"] == str(tiny_data[0] / "train")
    assert r["step_bench"]["solver_iterations"] == bench["solver_iterations"]
    assert len(bench["solver_iterations"]) == 6
    # Cached per command: the same run's bench again is read back, not rerun.
    synth, _ = tiny_data
    budget = solver_study.track_preset(solver_study.PRESETS["tiny"], "scratch")
    o = solver_study.run_overrides("scratch", "deq", budget, synth / "train", synth / "val", tmp_path / "w.pth")
    logged = []
    assert solver_study.step_bench(workdir, o, budget, logged.append) == r["step_bench"] and logged == []
    assert len(a["rho_whole_max"]) == len(a["rho_crop_max"]) == 3
    assert a["theorem1_holds_whole"] == (max(a["rho_whole_max"]) < 1)
    assert r["curves"]["step"] == [1, 2] and len(r["curves"]["val_psnr"]) == 2
    # The DEQ forward stops at its tolerance, and the analysis says whether every image got there.
    fw = a["forward"]
    assert fw["tol"] == load_config("deq").model.solver.tol
    assert fw["converged_all"] == all(x < fw["tol"] for x in fw["residual_max"])
    assert all(1 <= m <= load_config("deq").model.solver.max_iter for m in fw["iterations_max"])
    md = (out / "solver_study.md").read_text()
    assert "| scratch | deq | done |" in md and (out / "solver_study.png").stat().st_size > 0


def test_a_failed_run_is_reported_and_the_study_goes_on(tmp_path, tiny_data, monkeypatch):
    """train.py's exit status and last line become the run's status; the next run still runs."""
    calls = []

    def fake_train(workdir, overrides, log):
        calls.append(workdir.name)
        return {"returncode": 1, "peak_rss_bytes": 1, "message": "training: diverging at step 3"}

    monkeypatch.setattr(solver_study, "train", fake_train)
    assert solver_study.main(_args(tmp_path, tiny_data, "phantom,implicit")) == 1
    assert calls == ["phantom", "implicit"]
    runs = json.loads((tmp_path / "study" / "solver_study.json").read_text())["tracks"]["scratch"]
    assert (
        runs["phantom"]["status"] == "failed (1): training: diverging at step 3" and "analysis" not in runs["phantom"]
    )
    assert (
        "| scratch | implicit | failed (1): training: diverging at step 3 |"
        in (tmp_path / "study" / "solver_study.md").read_text()
    )


@pytest.mark.parametrize("track", solver_study.TRACKS)
@pytest.mark.parametrize("run", list(solver_study.RUNS))
def test_every_run_config_is_valid_and_has_its_solver(track, run, tmp_path):
    budget = solver_study.track_preset(solver_study.PRESETS["cpu"], track)
    o = solver_study.run_overrides(track, run, budget, tmp_path, tmp_path, tmp_path / "w.pth")
    cfg = apply_overrides(load_config("default"), list(o.items()))
    # Every run of a track has the same budget; the tracks see the same pixels a step.
    assert (cfg.data.crop_size, cfg.batch_size) == ((128, 2) if track == "finetune" else (64, 8))
    deq = load_config("deq")
    want = {"unrolled": ("unrolled", "unrolled"), "phantom": ("unrolled", "phantom"), "implicit": ("unrolled", "implicit"),
            "deq": (deq.model.solver.forward, "implicit"), "deq_no_stability": (deq.model.solver.forward, "implicit")}  # fmt: skip
    assert (cfg.model.solver.forward, cfg.model.solver.backward) == want[run]
    assert cfg.stability.weight == (deq.stability.weight if run == "deq" else 0.0)
    if run == "deq":  # the recipe's whole regulariser, not only its weight
        for k in set(deq.stability) - {"every", "iters"}:
            assert cfg.stability[k] == deq.stability[k], k
    assert cfg.data.fresh_haze is False and cfg.data.name == "paired"  # real haze, never synthesised
    assert (cfg.init_from == str(tmp_path / "w.pth")) == (track == "finetune")
    assert cfg.model.input_format == ("bgr255" if track == "finetune" else "rgb01")


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for argv, msg in (
        (["--output", str(tmp_path), "--runs", "unroled"], "--runs: unknown ['unroled']"),
        (["--output", str(tmp_path), "--train-data", str(tmp_path / "nope")], "--train-data"),
    ):
        with pytest.raises(SystemExit) as e:
            solver_study.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM needs Linux's /proc")
def test_a_runs_peak_memory_is_its_own_not_the_drivers():
    """A child of a large driver: wait4's ru_maxrss would report the driver's size (it survives
    fork and exec); the polled VmHWM reports what the child's program held."""
    import subprocess
    import sys

    ballast = np.ones(400 * 2**20 // 8)  # the driver holds 400 MiB, touched
    child = "import numpy, time; a = numpy.ones(150 * 2**20 // 8); time.sleep(1.5)"
    proc = subprocess.Popen([sys.executable, "-c", child])
    status, peak = solver_study.wait_with_peak(proc.pid, poll_s=0.1)
    assert os.waitstatus_to_exitcode(status) == 0
    assert 150 * 2**20 < peak < 400 * 2**20 + ballast[:1].nbytes
