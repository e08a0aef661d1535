"""train.py end to end on tiny data: outputs, checkpoints, SIGKILL resume, non-finite stop, the
command line, and the same steps on 1 and 8 (simulated CPU) devices."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from minet_jax import dehaze, load_pretrained
from minet_jax.checkpoint import CheckpointError, build_model, params_of
from minet_jax.config import apply_overrides, describe, load_config
from minet_jax.image_io import read_rgb, to_uint8
from minet_jax.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402


@pytest.fixture(scope="module")
def data_dirs(tiny_data):
    return tiny_data


@pytest.fixture(scope="module")
def finished_run(tiny_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = tiny_config()
    summary = train.train_and_evaluate(cfg, workdir)
    return cfg, workdir, summary


def test_summary_and_outputs(finished_run):
    cfg, workdir, summary = finished_run
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == summary
    for key in ("steps", "wall_time_s", "val_psnr", "val_ssim", "best_val_psnr", "input_psnr", "input_ssim"):
        assert np.isfinite(summary[key]), key
    assert summary["steps"] == cfg.num_steps
    assert summary["best_val_psnr"] >= summary["val_psnr"] - 1e-9

    # The best checkpoint is a model load_pretrained accepts, and it gives the logged PSNR.
    model = load_pretrained(summary["best_checkpoint"])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    best_step = int(Path(summary["best_checkpoint"]).name)
    logged = [r["val_psnr"] for r in records if r["step"] == best_step and "val_psnr" in r]
    assert logged and abs(logged[0] - summary["best_val_psnr"]) < 1e-9
    val = sorted((Path(cfg.data.manual_dir) / "val" / "hazy").iterdir())
    scores = []
    for hazy_path in val:
        clear = read_rgb(Path(cfg.data.manual_dir) / "val" / "clear" / f"{hazy_path.stem.split('_')[0]}.png")
        scores.append(psnr(to_uint8(dehaze(model, read_rgb(hazy_path))), clear))
    assert abs(np.mean(scores) - summary["best_val_psnr"]) < 1e-3

    # Scalars in JSONL (finite losses at every log step), TensorBoard events, image grids.
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == cfg.num_steps // cfg.log_every and all(np.isfinite(losses))
    assert any(abs(r.get("lr", -1) - cfg.lr) < 1e-9 for r in records)
    radii = [r[f"stability/block{i}_radius"] for r in records if "stability/block1_radius" in r for i in (1, 2, 3)]
    assert len(radii) == 3 * (cfg.num_steps // cfg.stability.every) and all(0 < x < 100 for x in radii)
    assert any(p.stat().st_size > 0 for p in (workdir / "tensorboard").iterdir())
    grid = read_rgb(max((workdir / "images").iterdir()))
    assert grid.shape == (48, 3 * 64 + 2 * 4, 3)


def test_refuses_checkpoint_of_another_model(finished_run):
    cfg, workdir, _ = finished_run
    other = apply_overrides(cfg, [f"model.T={cfg.model.T + 1}"])
    with pytest.raises(
        train.TrainingError, match=r"another model config:\n  T: checkpoint 2, config 3\n.*another --workdir"
    ):
        train.train_and_evaluate(other, workdir)


def _run(workdir: Path, data_dirs, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, str(ROOT / "train.py"), f"--config={ROOT / 'configs' / 'test.py'}", f"--workdir={workdir}",
        f"--config.data.manual_dir={data_dirs[0]}", "--set", f"data.data_dir={data_dirs[1]}", *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir: Path) -> list[np.ndarray]:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return [
        np.asarray(x) for x in jax.tree.leaves(params_of(load_pretrained(workdir / "checkpoints" / str(steps[-1]))))
    ]


def _steps_logged(workdir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_killed_or_interrupted_run_resumes_to_the_uninterrupted_parameters(finished_run, data_dirs, tmp_path, sig):
    cfg, reference_dir, _ = finished_run
    workdir = tmp_path / "stopped"
    proc = _run(workdir, data_dirs)
    first = workdir / "checkpoints" / "2"
    deadline = time.time() + 300
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be stopped:\n" + proc.stdout.read()
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=300)
    assert not (workdir / "summary.json").exists()
    stopped_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped_at < cfg.num_steps
    if sig != signal.SIGKILL:
        # Finishes its step, saves it, and says so in one line (no traceback), exit status 128 + signal.
        assert proc.returncode == 128 + sig, out
        assert out.strip().splitlines()[-1] == (
            f"stopped by {sig.name} after step {stopped_at}: checkpoint saved in "
            f"{workdir / 'checkpoints' / str(stopped_at)}; rerun the same command to resume"
        )
        assert "Traceback" not in out

    resumed = _run(workdir, data_dirs)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resumed from {workdir / 'checkpoints' / str(stopped_at)}" in out
    for a, b in zip(_final_params(reference_dir), _final_params(workdir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # Each step logged once, as in the uninterrupted run, with the same losses.
    assert _steps_logged(workdir) == _steps_logged(reference_dir)
    ref = {r["step"]: r for r in map(json.loads, (reference_dir / "metrics.jsonl").read_text().splitlines())}
    for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
        if "loss" in r:
            assert abs(r["loss"] - ref[r["step"]]["loss"]) <= 1e-5 * abs(ref[r["step"]]["loss"]), r["step"]


_TWO_INTERRUPTS = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import train
with train.StopSignals(multiprocess=False) as s:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    print("FIRST", s.stop_now(1, None), flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
print("NOT REACHED")
"""


def test_a_second_ctrl_c_exits_at_once():
    out = subprocess.run(
        [sys.executable, "-c", _TWO_INTERRUPTS.format(root=str(ROOT))], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 130
    assert f"FIRST {int(signal.SIGINT)}" in out.stdout and "NOT REACHED" not in out.stdout
    assert "second interrupt: exiting now" in out.stderr and "Traceback" not in out.stderr


def test_rerun_of_a_finished_run_touches_nothing_and_fewer_steps_are_refused(finished_run):
    cfg, workdir, summary = finished_run
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in workdir.rglob("*") if p.is_file()}
    assert train.train_and_evaluate(cfg, workdir) == summary
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(train.TrainingError, match=f"checkpoint at step {cfg.num_steps}, past config.num_steps 4"):
        train.train_and_evaluate(apply_overrides(cfg, ["num_steps=4"]), workdir)


def _newest_step_file(workdir: Path, step: int) -> Path:
    files = [p for p in (workdir / "checkpoints" / str(step) / "params").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left pending
def test_unreadable_newest_checkpoint_is_moved_aside_and_the_run_resumes_before_it(finished_run, tmp_path, capsys):
    cfg, reference_dir, _ = finished_run
    workdir = tmp_path / "damaged"
    shutil.copytree(reference_dir, workdir)
    (workdir / "summary.json").unlink()
    newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    damaged = _newest_step_file(workdir, newest)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    # load_pretrained names it in one line
    with pytest.raises(CheckpointError) as e:
        load_pretrained(workdir / "checkpoints" / str(newest))
    assert str(workdir / "checkpoints" / str(newest)) in str(e.value) and "\n" not in str(e.value)

    summary = train.train_and_evaluate(cfg, workdir)
    out = capsys.readouterr().out
    assert f"checkpoint {workdir / 'checkpoints' / str(newest)} cannot be read" in out
    aside = list((workdir / "checkpoints_unreadable").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(f"{newest}-")  # moved, not deleted
    assert summary["steps"] == cfg.num_steps
    for a, b in zip(_final_params(reference_dir), _final_params(workdir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left pending
def test_when_no_checkpoint_can_be_read_nothing_is_moved_and_the_run_stops(finished_run, tmp_path):
    cfg, reference_dir, _ = finished_run
    workdir = tmp_path / "all_damaged"
    shutil.copytree(reference_dir, workdir)
    (workdir / "summary.json").unlink()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:  # e.g. another version's format: every step fails, none is damage to set aside
        damaged = _newest_step_file(workdir, step)
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(
        train.TrainingError, match=rf"^no checkpoint in .*checkpoints can be read; the newest, {steps[-1]}: "
    ):
        train.train_and_evaluate(cfg, workdir)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == steps
    assert not (workdir / "checkpoints_unreadable").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pending reads of the test above
def test_failed_checkpoint_save_stops_in_one_line_and_leaves_no_partial_folder(tiny_config, tmp_path, monkeypatch):
    from orbax.checkpoint import handlers

    train.train_and_evaluate(tiny_config("num_steps=2"), tmp_path)

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(handlers.JsonCheckpointHandler, "async_save", full_disk)
        with pytest.raises(train.TrainingError) as e:
            train.train_and_evaluate(tiny_config("num_steps=4"), tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert str(e.value) == (
        f"could not write checkpoint {ckpts / '3'}: [Errno 28] No space left on device "
        f"(details: {tmp_path / 'checkpoint_error.log'}); "
        f"stopped, the last good checkpoint is {ckpts / '2'}"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["2"]  # no half-written step folder
    assert train.train_and_evaluate(tiny_config("num_steps=4"), tmp_path)["steps"] == 4  # and the rerun goes on


def test_unwritable_workdir_is_one_line(tiny_config, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(train.TrainingError, match=r"^cannot write to --workdir .*file/run: "):
        train.train_and_evaluate(tiny_config(), tmp_path / "file" / "run")


def test_diverging_loss_stops_the_run(tiny_config, tmp_path):
    # Any loss over 1e-9 times the recent median counts as diverging: the second step stops it.
    with pytest.raises(train.TrainingError, match=r"^diverging: the loss at step 2 is .* over max_loss_ratio 1e-09"):
        train.train_and_evaluate(tiny_config("max_loss_ratio=1e-9"), tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config("num_steps=2")
    train.train_and_evaluate(cfg, tmp_path)
    good = _final_params(tmp_path)
    # Adam's first step moves every weight by about lr: 1e30 overflows the next forward pass.
    cfg = tiny_config("num_steps=6", "lr=1e30")
    with pytest.raises(train.TrainingError, match="non-finite"):
        train.train_and_evaluate(cfg, tmp_path)
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == 2
    for a, b in zip(good, _final_params(tmp_path), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in good)


def test_command_line_overrides_in_order_and_bad_ones_in_one_line(capsys):
    args, overrides = train.parse_args(
        ["--config", "test", "--set", "model.T=4", "--config.lr=1e-3", "--config.num_steps", "5", "--set=seed=2",
         "--workdir", "/tmp/x"]
    )  # fmt: skip
    assert (args.config, args.workdir) == ("test", "/tmp/x")
    assert overrides == ["model.T=4", "lr=1e-3", "num_steps=5", "seed=2"]
    assert train.main(["--config", "test", "--config.num_step=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown config field 'num_step': the config has no 'num_step'; did you mean num_steps?"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=-1", "error: config field lr must be > 0, got -1.0"),
        ("lr=0", "error: config field lr must be > 0, got 0.0"),
        ("model.solver.backward=implict", "error: config field model.solver.backward must be one of 'unrolled', "
         "'implicit', 'phantom', got 'implict'; did you mean implicit?"),
        ("model.T=abc", "error: config field model.T takes int values (now 2), got 'abc'"),
    ],
)  # fmt: skip
def test_config_mistakes_are_refused_in_one_line_before_anything_is_built(override, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train.main(["--config", "test", "--workdir", str(workdir), "--set", override]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not workdir.exists()


def test_help_lists_every_config_field_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--config", "test", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, value in describe(load_config("test")):
        assert re.search(rf"^  {re.escape(key)} = {re.escape(repr(value))}\s+\S", out, re.M), key


def test_grid_rows_show_distinct_photos_first():
    a, b = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    images = [{"hazy": a + 0.1 * i, "clear": c} for i, c in enumerate([a, a, a, b, b])]
    rows = train.grid_rows(images, [f"out{i}" for i in range(5)], 3)
    assert [r[1] for r in rows] == ["out0", "out3", "out1"]


_SHARDED = """
import json, sys
sys.path.insert(0, {root!r})
import jax
import train
from minet_jax.config import apply_overrides, describe, load_config, load_config
cfg = apply_overrides(load_config("test"), ["data.manual_dir={synth}", "data.data_dir={tfds}", "batch_size=8",
                      "num_steps=2", "eval_every=2", "checkpoint_every=2", "image_every=2"])
summary = train.train_and_evaluate(cfg, {workdir!r})
print("DEVICES", jax.device_count(), summary["devices"], summary["processes"])
"""


def _train_on(devices: int, synth: Path, tfds: Path, workdir: Path) -> str:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = _SHARDED.format(root=str(ROOT), synth=str(synth), tfds=str(tfds), workdir=str(workdir))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_one_and_eight_devices_give_the_same_parameters(tiny_data, tmp_path):
    synth, tfds = tiny_data
    runs = {}
    for n in (1, 8):
        out = _train_on(n, synth, tfds, tmp_path / f"run{n}")
        assert f"DEVICES {n} {n} 1" in out
        assert json.loads((tmp_path / f"run{n}" / "summary.json").read_text())["devices"] == n
        runs[n] = jax.tree_util.tree_leaves_with_path(
            params_of(load_pretrained(tmp_path / f"run{n}" / "checkpoints" / "2"))
        )
    moved = 0.0
    for (path, a), (_, b) in zip(runs[1], runs[8], strict=True):
        name = jax.tree_util.keystr(path)
        if name in _ROUNDING_DRIVEN:
            continue
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=name)
        moved = max(moved, float(np.abs(np.asarray(a)).max()))
    assert moved > 0


# The transposed convolutions' biases feed an instance norm, which subtracts them again: their
# gradient is zero but for rounding, which Adam (g / sqrt(v)) turns into steps of about the
# learning rate whose sign is the rounding's. Their values say nothing about the devices.
_ROUNDING_DRIVEN = {"['deconv3']['bias']", "['deconv2']['bias']"}


def test_init_from_a_checkpoint_starts_from_its_parameters(finished_run, tiny_config, tmp_path):
    cfg, source_dir, summary = finished_run
    source = [np.asarray(x) for x in jax.tree.leaves(params_of(load_pretrained(summary["last_checkpoint"])))]
    lr, steps = 1e-9, 2
    run = tiny_config(f"init_from={summary['last_checkpoint']}", f"lr={lr}", f"num_steps={steps}", "eval_every=2")
    train.train_and_evaluate(run, tmp_path / "init")
    got = _final_params(tmp_path / "init")
    # Adam moves each parameter by at most about lr per step (its update is m / sqrt(v) <= 1 in size)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, source, strict=True)) <= 10 * lr * steps
    fresh = [np.asarray(x) for x in jax.tree.leaves(params_of(build_model(run.model, seed=run.seed)))]
    assert max(float(np.abs(a - b).max()) for a, b in zip(fresh, source, strict=True)) > 1e-3  # else it proves nothing


def test_init_from_another_architecture_is_refused_in_one_line(finished_run, tiny_config, tmp_path):
    _, _, summary = finished_run
    run = tiny_config(f"init_from={summary['last_checkpoint']}", "model.channels=4", "num_steps=1")
    with pytest.raises(
        train.TrainingError, match=r"^config.init_from: .*\(model.channels: checkpoint 8, config 4\): set those"
    ) as e:
        train.train_and_evaluate(run, tmp_path / "other")
    assert "\n" not in str(e.value)
    with pytest.raises(train.TrainingError, match=r"^config.init_from: checkpoint not found: .*nothing"):
        train.train_and_evaluate(tiny_config(f"init_from={tmp_path / 'nothing'}", "num_steps=1"), tmp_path / "missing")


def test_init_from_the_authors_weights(official_weights, tiny_config):
    from minet_jax.checkpoint import initial_params, load_torch_weights  # noqa: PLC0415
    from minet_jax.config import model_config  # noqa: PLC0415

    want = params_of(load_torch_weights(official_weights))
    got = initial_params(model_config("official"), official_weights)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rgb = apply_overrides(model_config("official"), ["input_format=rgb01"])
    with pytest.raises(ValueError, match=r"\(model.input_format: checkpoint 'bgr255', config 'rgb01'\)"):
        initial_params(rgb, official_weights)
