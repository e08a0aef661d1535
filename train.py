"""Train MI-Net.

    python train.py                                         # configs/default.py: embedded synthetic haze
    python train.py --config configs/official_its.py --workdir runs/its --set num_steps=1000
    python train.py --config test --set model.T=4 --config.lr=1e-3   # ml_collections' spelling works too

`--config` takes a config file or a preset name from configs/; `--set KEY=VALUE` (or
`--config.KEY=VALUE`) overrides any field of it (minet_jax.config). Resumes from the newest
checkpoint in --workdir (parameters, optimiser state, step; the data order is a pure function of
the seed and the step); a finished run is left as it is. Ctrl-C or SIGTERM saves the current step
and exits (a second Ctrl-C exits at once). Writes TensorBoard events, metrics.jsonl, image grids,
checkpoints (the last K and the best by validation PSNR) and, at the end, summary.json; see
README's "Where outputs go".
"""

from __future__ import annotations

if __name__ == "__main__":  # before JAX is imported: see minet_jax/host.py
    from minet_jax.host import with_huge_pages

    with_huge_pages()

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from minet_jax import checkpoint, training
from minet_jax.checkpoint import build_model
from minet_jax.config import ConfigError, apply_overrides, check, help_lines, load_config
from minet_jax.logs import MetricLog, image_grid


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite or diverging loss, incompatible checkpoint, ...)."""


class Interrupted(TrainingError):
    """SIGINT or SIGTERM (or a multi-host preemption notice): stopped after a step, saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


# ---------------------------------------------------------------------------------------------
# Devices: batches sharded over every device of every process, parameters replicated.


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of the batch as one array sharded over all devices of all processes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# Interrupts and preemption


class StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step and save; a second SIGINT
    exits at once. With several processes the stop is orbax's preemption sync point instead
    (JAX's preemption service takes SIGTERM there), so that every process saves the same step."""

    def __init__(self, multiprocess: bool):
        self.multiprocess = multiprocess
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if not self.multiprocess and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            sys.stderr.write("\nsecond interrupt: exiting now without saving (the last checkpoint is kept)\n")
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
            "(Ctrl-C again to exit at once)\n"
        )

    def stop_now(self, step: int, mngr) -> int | None:
        """The signal to stop for after `step`, or None to go on."""
        if self.multiprocess:
            return signal.SIGTERM if mngr.reached_preemption(step) else None
        return self.signum


# ---------------------------------------------------------------------------------------------
# Main loop


def grid_rows(images: list[dict], outputs: list[np.ndarray], n: int) -> list[tuple]:
    """Up to `n` (hazy, dehazed, clear) rows, one per distinct clear image before any repeats."""
    order, seen = [], set()
    for i, ex in enumerate(images):
        key = hash(np.ascontiguousarray(ex["clear"]).tobytes())
        if key not in seen:
            seen.add(key)
            order.append(i)
    order += [i for i in range(len(images)) if i not in order]
    return [(images[i]["hazy"], outputs[i], images[i]["clear"]) for i in order[:n]]


def _prepare_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to --workdir {workdir}: {e.strerror or e}") from None


def _finished_summary(workdir: Path, step: int) -> dict | None:
    try:
        summary = json.loads((workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("steps") == step else None


def train_and_evaluate(cfg, workdir: str | Path) -> dict:
    """Train per `cfg` in `workdir` (resuming if it holds checkpoints); returns the summary.

    A workdir whose run has finished at `cfg.num_steps` is left untouched: its summary is
    returned. `Interrupted` after SIGINT / SIGTERM, once the step's checkpoint is saved."""
    from minet_jax import input_pipeline  # noqa: PLC0415 (tfds / grain are heavy imports)

    try:
        check(cfg, devices=jax.device_count())
    except ConfigError as e:
        raise TrainingError(str(e)) from None
    t_start = time.time()
    workdir = Path(workdir).resolve()
    _prepare_workdir(workdir)
    is_main = jax.process_index() == 0

    mesh = make_mesh()
    replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # Model, optimiser, and the newest readable checkpoint
    model = build_model(cfg.model, seed=cfg.seed)
    tx = training.make_optimizer(cfg)
    schedule = training.learning_rate_schedule(cfg)
    graphdef, state = training.init_state(model, tx)
    del model
    try:
        mngr = checkpoint.checkpoint_manager(workdir, cfg.keep_checkpoints)
        restored = checkpoint.restore_newest_readable(mngr, state, cfg, say=lambda m: print(m, flush=True))
    except checkpoint.ConfigMismatch as e:
        raise TrainingError(f"{e}\nto train this config, choose another --workdir") from None
    except checkpoint.CheckpointError as e:
        raise TrainingError(f"{e}; nothing was moved: choose another --workdir to start afresh") from None
    except OSError as e:
        raise TrainingError(
            f"cannot use the checkpoints in {workdir / 'checkpoints'}: {checkpoint.reason(e)}"
        ) from None
    start = 0 if restored is None else int(restored.step)
    if start > cfg.num_steps:
        raise TrainingError(
            f"{workdir} holds a checkpoint at step {start}, past config.num_steps {cfg.num_steps}: set "
            f"num_steps >= {start} to train on, or choose another --workdir"
        )
    if start == cfg.num_steps and (done := _finished_summary(workdir, start)) is not None:
        mngr.close()
        print(
            f"{workdir} holds a run finished at step {start}; nothing to do (raise num_steps to train on)", flush=True
        )
        return done
    if restored is not None:
        state = restored
        print(f"resumed from {mngr.directory / str(start)}", flush=True)
    elif cfg.init_from:
        try:
            initial = checkpoint.initial_params(cfg.model, cfg.init_from)
        except (OSError, ValueError) as e:  # missing, unreadable, unsafe or another architecture
            mngr.close()
            raise TrainingError(f"config.init_from: {checkpoint.reason(e)}") from None
        params = state.params
        nnx.replace_by_pure_dict(params, initial)
        state = training.new_state(params, tx)
        print(f"initialised from {cfg.init_from}", flush=True)
    state = jax.device_put(state, replicated)
    if is_main:
        (workdir / "config.json").write_text(cfg.to_json(indent=2))

    # Data: a missing folder, an unpaired or unreadable image is the user's to fix, named in one line.
    try:
        val_images = input_pipeline.val_images(cfg.data)
        batches = input_pipeline.train_iterator(
            cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )  # fmt: skip
    except (ValueError, OSError) as e:  # PairError, LayoutError, ImageReadError, a missing manual_dir
        mngr.close()
        raise TrainingError(f"data: {checkpoint.reason(e)}") from None
    inputs = training.input_quality(val_images)

    train_step = training.make_train_step(graphdef, tx, cfg.loss, cfg.stability)
    # Theorem 1's radius is about the IM-block's iteration: residual blocks have none to monitor.
    monitored = cfg.stability.every and cfg.model.block == "im"
    radius_monitor = training.make_radius_monitor(graphdef, cfg.stability.iters) if monitored else None
    monitor_input = training.radius_monitor_input(val_images, cfg.data.crop_size)
    predict = training.make_predict(graphdef)
    log = MetricLog(workdir, enabled=is_main, start=start)
    bar = tqdm(
        total=cfg.num_steps, initial=start, desc="train", disable=not (cfg.progress and is_main), dynamic_ncols=True
    )
    watch = training.DivergenceWatch(cfg.max_loss_ratio)
    timing = {"t": time.time(), "step": start}

    def finish(step: int, metrics: dict, last_good: jax.Array) -> None:
        """Read step `step`'s metrics (after the next step is dispatched, so the host never waits
        idle), stop on a non-finite or diverging loss, and log them every `log_every` steps."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bar.update(1)
        if not bool(last_good):
            raise TrainingError(
                f"non-finite loss or gradient at step {step} (loss {values['loss']}); the update was skipped and "
                f"the last good checkpoint in {mngr.directory} is intact: lower config.lr or set config.grad_clip, "
                "then rerun to resume"
            )
        loss = values["loss"]
        if watch.diverging(loss):  # a diverging loss is not recorded: reference() is still the one it failed
            raise TrainingError(
                f"diverging: the loss at step {step} is {loss:.4g}, over max_loss_ratio {cfg.max_loss_ratio:g} times "
                f"the median of the last {len(watch.recent)} steps' ({watch.reference():.4g}); the last checkpoint in "
                f"{mngr.directory} is intact: lower config.lr or set config.grad_clip"
            )
        if step % cfg.log_every == 0 or step == cfg.num_steps:
            now = time.time()
            values["lr"] = float(schedule(step - 1))
            values["images_per_second"] = (step - timing["step"]) * cfg.batch_size / max(now - timing["t"], 1e-9)
            timing.update(t=now, step=step)
            log.scalars(step, values)
            bar.set_postfix(loss=f"{values['loss']:.4g}", psnr=f"{values['train_psnr']:.2f}")

    def save(step: int, val: dict | None) -> None:
        if not bool(state.last_good):
            raise TrainingError(f"non-finite loss or gradient before step {step}; not checkpointing")
        try:
            checkpoint.save_train_state(mngr, state, cfg, val)
        except checkpoint.CheckpointError as e:
            last = mngr.latest_step()
            kept = f"the last good checkpoint is {mngr.directory / str(last)}" if last is not None else "no checkpoint"
            raise TrainingError(f"{e}; stopped, {kept}") from None

    val, pending, stopped = None, None, None
    try:
        with StopSignals(multiprocess=jax.process_count() > 1) as signals:
            for step in range(start + 1, cfg.num_steps + 1):
                batch = global_batch(next(batches), data_sharding)
                state, metrics = train_step(state, batch)
                if pending is not None:
                    finish(*pending)
                pending = (step, metrics, state.last_good)
                final = step == cfg.num_steps
                stopped = signals.stop_now(step, mngr)
                if radius_monitor is not None and step % cfg.stability.every == 0:
                    # Its own schedule: tying it to log steps silently skipped it when the periods differed.
                    radii = radius_monitor(
                        state.params, batch["hazy"] if monitor_input is None else monitor_input, step
                    )
                    log.scalars(step, {k: float(v) for k, v in radii.items()})
                evaluate = step % cfg.eval_every == 0 or final
                if evaluate or step % cfg.checkpoint_every == 0 or stopped is not None:
                    finish(*pending)
                    pending = None
                    if evaluate:
                        val, outs = training.validate(predict, state.params, val_images)
                        if val["val_nonfinite"]:
                            raise TrainingError(
                                f"non-finite validation output at step {step}; not checkpointing, the last good "
                                f"checkpoint in {mngr.directory} is intact: lower config.lr or set config.grad_clip"
                            )
                        log.scalars(step, val)
                        if step % cfg.image_every == 0 or final:
                            log.image(
                                step, "val/hazy_dehazed_clear", image_grid(grid_rows(val_images, outs, cfg.grid_images))
                            )
                    log.flush()
                    save(step, val if evaluate else None)
                if stopped is not None:
                    break
            if pending is not None:
                finish(*pending)
    finally:
        bar.close()
        log.close()
    if stopped is not None:
        mngr.close()
        raise Interrupted(
            f"stopped by {signal.Signals(stopped).name} after step {int(state.step)}: checkpoint saved in "
            f"{mngr.directory / str(int(state.step))}; rerun the same command to resume",
            stopped,
        )

    if val is None and val_images:  # resumed at the last step, whose summary was never written
        val, _ = training.validate(predict, state.params, val_images)
    best_step, best_psnr = checkpoint.best_saved(mngr)
    summary = {
        "steps": int(state.step),
        "wall_time_s": round(time.time() - t_start, 1),
        "val_psnr": val["val_psnr"] if val else None,
        "val_ssim": val["val_ssim"] if val else None,
        "best_val_psnr": best_psnr,
        **inputs,
        "best_checkpoint": str(mngr.directory / str(best_step)) if best_step is not None else None,
        "last_checkpoint": str(mngr.directory / str(mngr.latest_step())),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
    }
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    mngr.close()
    return summary


def _fields_help(argv: list[str]) -> str:
    """The config fields, defaults and meanings for --help, of the --config given (else default)."""
    if not {"-h", "--help"} & set(argv):
        return ""
    spec = "default"
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--config="):
            spec = arg.removeprefix("--config=")
    try:
        cfg = load_config(spec)
    except ConfigError as e:
        return f"(cannot list the config fields: {e})"
    return f"config fields of {spec} (override with --set KEY=VALUE):\n" + "\n".join(help_lines(cfg))


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, overrides): `--set KEY=VALUE` and ml_collections-style `--config.KEY=VALUE` (or
    `--config.KEY VALUE`) both become KEY=VALUE overrides, in the order given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_fields_help(argv)
    )
    parser.add_argument(
        "--config", default="default", help="config file, or a preset name in configs/ (default: default)"
    )
    parser.add_argument("--workdir", default="runs/default", help="where checkpoints, logs and summary.json go")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.T=16 (repeatable; same as --config.model.T=16)")  # fmt: skip
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(("--config.", "--set=")) or arg == "--set":
            if arg == "--set":
                item = argv[i + 1] if i + 1 < len(argv) else parser.error("--set needs KEY=VALUE")
                i += 1
            elif arg.startswith("--set="):
                item = arg.removeprefix("--set=")
            else:
                key, sep, value = arg.removeprefix("--config.").partition("=")
                if not sep:
                    value = argv[i + 1] if i + 1 < len(argv) else parser.error(f"{arg} needs a value")
                    i += 1
                item = f"{key}={value}"
            overrides.append(item)
        else:
            rest.append(arg)
        i += 1
    return parser.parse_args(rest), overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        cfg = apply_overrides(load_config(args.config), overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.distributed:
        jax.distributed.initialize()  # coordinator, process count and id from the environment
    try:
        check(cfg, devices=jax.device_count())
        summary = train_and_evaluate(cfg, args.workdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Before the loop (data, compilation), or with several processes, where a stop must wait for
        # orbax's preemption sync point: nothing new to save, the last checkpoint stays.
        print("interrupted: exiting without saving (the last checkpoint in --workdir is kept)", file=sys.stderr)
        return 130
    if summary.get("val_psnr") is not None:
        print(
            f"validation: dehazed PSNR {summary['val_psnr']:.2f} dB, SSIM {summary['val_ssim']:.4f} | "
            f"hazy input PSNR {summary['input_psnr']:.2f} dB, SSIM {summary['input_ssim']:.4f} "
            f"({summary['val_psnr'] - summary['input_psnr']:+.2f} dB)"
        )
    print(f"summary: {Path(args.workdir).resolve() / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
