"""Train MI-Net.

    python train.py                                         # configs/default.py: embedded synthetic haze
    python train.py --config configs/official_its.py --workdir runs/its --set num_steps=1000
    python train.py --config test --set model.T=4 --config.lr=1e-3   # ml_collections' spelling works too

`--config` takes a config file or a preset name from configs/; `--set KEY=VALUE` (or
`--config.KEY=VALUE`) overrides any field of it (minet_jax.config). Resumes from the newest
checkpoint in --workdir (parameters, optimiser state, step; the data order is a pure function of
the seed and the step). Writes TensorBoard events, metrics.jsonl, image grids, checkpoints (the
last K and the best by validation PSNR) and, at the end, summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from minet_jax import checkpoint, training
from minet_jax.checkpoint import build_model
from minet_jax.config import ConfigError, apply_overrides, load_config
from minet_jax.logs import MetricLog, image_grid


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint, ...)."""


# ---------------------------------------------------------------------------------------------
# Devices: batches sharded over every device of every process, parameters replicated.


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of the batch as one array sharded over all devices of all processes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# Main loop


def train_and_evaluate(cfg, workdir: str | Path) -> dict:
    """Train per `cfg` in `workdir` (resuming if it holds checkpoints); returns the summary."""
    from minet_jax import input_pipeline  # noqa: PLC0415 (tfds / grain are heavy imports)

    t_start = time.time()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json(indent=2))

    mesh = make_mesh()
    if cfg.batch_size % jax.device_count():
        raise TrainingError(
            f"config.batch_size {cfg.batch_size} must be a multiple of the {jax.device_count()} devices "
            f"({jax.process_count()} processes) it is sharded over"
        )
    replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # Model and optimiser
    model = build_model(cfg.model, seed=cfg.seed)
    tx = training.make_optimizer(cfg)
    schedule = training.learning_rate_schedule(cfg)
    graphdef, state = training.init_state(model, tx)
    del model
    mngr = checkpoint.checkpoint_manager(workdir, cfg.keep_checkpoints)
    if mngr.latest_step() is not None:
        try:
            state = checkpoint.restore_train_state(mngr, state, cfg)
        except checkpoint.ConfigMismatch as e:
            raise TrainingError(f"{e}\nto train this config, choose another --workdir") from None
        print(f"resumed from {mngr.directory / str(int(state.step))}", flush=True)
    state = jax.device_put(state, replicated)
    start = int(state.step)

    # Data
    val_images = input_pipeline.val_images(cfg.data)
    inputs = training.input_quality(val_images)
    batches = input_pipeline.train_iterator(
        cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip

    train_step = training.make_train_step(graphdef, tx, cfg.loss, cfg.stability)
    radius_monitor = training.make_radius_monitor(graphdef, cfg.stability.iters) if cfg.stability.every else None
    monitor_input = training.radius_monitor_input(val_images, cfg.data.crop_size)
    predict = training.make_predict(graphdef)
    is_main = jax.process_index() == 0
    log = MetricLog(workdir, enabled=is_main)
    val = None
    bar = tqdm(total=cfg.num_steps, initial=start, desc="train", disable=not (cfg.progress and is_main), dynamic_ncols=True)
    t_last, n_last = time.time(), start
    try:
        for step in range(start + 1, cfg.num_steps + 1):
            batch = global_batch(next(batches), data_sharding)
            state, metrics = train_step(state, batch)
            bar.update(1)
            final = step == cfg.num_steps
            if step % cfg.log_every == 0 or final:
                if not bool(state.last_good):
                    raise TrainingError(
                        f"non-finite loss or gradient at or before step {step} (loss {float(metrics['loss'])}); "
                        f"the update was skipped and the last good checkpoint in {mngr.directory} is intact: "
                        "lower config.lr or set config.grad_clip, then rerun to resume"
                    )
                now = time.time()
                values = {k: float(v) for k, v in metrics.items()}
                values["lr"] = float(schedule(step - 1))
                values["images_per_second"] = (step - n_last) * cfg.batch_size / max(now - t_last, 1e-9)
                t_last, n_last = now, step
                log.scalars(step, values)
                bar.set_postfix(loss=f"{values['loss']:.4g}", psnr=f"{values['train_psnr']:.2f}")
            if radius_monitor is not None and step % cfg.stability.every == 0:
                # Its own schedule: tying it to log steps silently skipped it when the periods differed.
                radii = radius_monitor(state.params, batch["hazy"] if monitor_input is None else monitor_input, step)
                log.scalars(step, {k: float(v) for k, v in radii.items()})
            if step % cfg.eval_every == 0 or final:
                val, outs = training.validate(predict, state.params, val_images)
                if val["val_nonfinite"]:
                    raise TrainingError(
                        f"non-finite validation output at step {step}; not checkpointing, the last good "
                        f"checkpoint in {mngr.directory} is intact: lower config.lr or set config.grad_clip"
                    )
                log.scalars(step, val)
                if step % cfg.image_every == 0 or final:
                    rows = [(ex["hazy"], o, ex["clear"]) for ex, o in zip(val_images, outs)][: cfg.grid_images]
                    log.image(step, "val/hazy_dehazed_clear", image_grid(rows))
            if step % cfg.checkpoint_every == 0 or step % cfg.eval_every == 0 or final:
                if not bool(state.last_good):
                    raise TrainingError(f"non-finite loss or gradient before step {step}; not checkpointing")
                checkpoint.save_train_state(mngr, state, cfg, val if step % cfg.eval_every == 0 or final else None)
    finally:
        bar.close()
        mngr.wait_until_finished()
        log.close()

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


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(arguments, overrides): `--set KEY=VALUE` and ml_collections-style `--config.KEY=VALUE` (or
    `--config.KEY VALUE`) both become KEY=VALUE overrides, in the order given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="config file, or a preset name in configs/ (default: default)")
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
        summary = train_and_evaluate(cfg, args.workdir)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"validation: dehazed PSNR {summary['val_psnr']:.2f} dB, SSIM {summary['val_ssim']:.4f} | "
        f"hazy input PSNR {summary['input_psnr']:.2f} dB, SSIM {summary['input_ssim']:.4f} "
        f"({summary['val_psnr'] - summary['input_psnr']:+.2f} dB)"
    )
    print(f"summary: {Path(args.workdir).resolve() / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
