"""Train MI-Net.

    python train.py                                         # embedded synthetic haze, ~10 min on CPU
    python train.py --config configs/official_its.py --workdir runs/its --config.num_steps=1000

Resumes from the newest checkpoint in --workdir (parameters, optimiser state, step; the data order
is a pure function of the seed and the step). Writes TensorBoard events, metrics.jsonl, image grids,
checkpoints (the last K and the best by validation PSNR) and, at the end, summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
from tqdm import tqdm

from minet_jax import training
from minet_jax.checkpoint import build_model, params_of
from minet_jax.imageio import to_uint8
from minet_jax.logs import MetricLog, image_grid
from minet_jax.metrics import psnr, ssim

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, logs and summary go.")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint, ...)."""


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: Path, cfg) -> ocp.CheckpointManager:
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(cfg.keep_checkpoints),
            pp.BestN(get_metric_fn=lambda m: m["val_psnr"], reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    return ocp.CheckpointManager(
        workdir / "checkpoints", options=options, item_names=("params", "train_state", "model_config", "meta")
    )


# How a layer is computed, not what it computes: free to differ between a checkpoint and its resume.
IMPLEMENTATION_KEYS = ("conv_impl", "share_sep_impl")


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted((set(saved) | set(current)) - ({*IMPLEMENTATION_KEYS} if not prefix else set())):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
    return diffs


def save(mngr, state: training.TrainState, graphdef, cfg, val: dict | None) -> None:
    model = nnx.merge(graphdef, state.params)
    step = int(state.step)
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params_of(model)),
            train_state=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
            model_config=ocp.args.JsonSave(json.loads(cfg.model.to_json())),
            meta=ocp.args.JsonSave({"step": step, "seed": cfg.seed, "data_position": step, "val": val}),
        ),
        metrics={"val_psnr": val["val_psnr"]} if val else None,
    )


def restore(mngr, state: training.TrainState, graphdef, cfg) -> training.TrainState:
    """The newest checkpoint's state; refuses one made for another model or seed."""
    step = mngr.latest_step()
    saved = mngr.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    diffs = _config_diff(saved["model_config"], json.loads(cfg.model.to_json()))
    if diffs:
        raise TrainingError(
            f"checkpoint {mngr.directory / str(step)} was made for another model config:\n  " + "\n  ".join(diffs)
        )
    if saved["meta"]["seed"] != cfg.seed:
        raise TrainingError(f"checkpoint at step {step} used seed {saved['meta']['seed']}, config says {cfg.seed}")
    model = nnx.merge(graphdef, state.params)
    target_params = jax.tree.map(np.asarray, params_of(model))
    target_ts = jax.tree.map(np.asarray, {"opt_state": state.opt_state, "step": state.step})
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target_params), train_state=ocp.args.StandardRestore(target_ts)
        ),
    )
    nnx.replace_by_pure_dict(state.params, out["params"])
    opt_state = jax.tree.map(lambda t, v: jax.numpy.asarray(v, t.dtype), state.opt_state, out["train_state"]["opt_state"])
    return training.TrainState(jax.numpy.asarray(out["train_state"]["step"]), state.params, opt_state, state.last_good)


def best_saved(mngr) -> tuple[int | None, float | None]:
    """(step, validation PSNR) of the best kept checkpoint, from their `meta` items."""
    best = (None, None)
    for step in mngr.all_steps():
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        val = meta.get("val")
        if val and (best[1] is None or val["val_psnr"] > best[1]):
            best = (step, val["val_psnr"])
    return best


# ---------------------------------------------------------------------------------------------
# Validation


def input_quality(images: list[dict]) -> dict:
    """The hazy inputs' own PSNR / SSIM against the clear images."""
    hz = [(to_uint8(ex["hazy"]), to_uint8(ex["clear"])) for ex in images]
    return {
        "input_psnr": float(np.mean([psnr(a, b) for a, b in hz])),
        "input_ssim": float(np.mean([ssim(a, b) for a, b in hz])),
    }


# ---------------------------------------------------------------------------------------------
# Devices: batches sharded over every device of every process, parameters replicated.


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of the batch as one array sharded over all devices of all processes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# Main loop


def stability_probe_input(val_images: list[dict], crop_size: int) -> np.ndarray | None:
    """The training-time radius probe's input: a fixed central crop (training crop size, else 128)
    of the first validation image, so that its curve follows the parameters and not the batch.
    None (probe the batch instead) without validation images."""
    if not val_images:
        return None
    img = val_images[0]["hazy"]
    s = min(int(crop_size) or 128, *img.shape[:2])
    y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
    return np.ascontiguousarray(img[None, y : y + s, x : x + s])


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
    mngr = checkpoint_manager(workdir, cfg)
    if mngr.latest_step() is not None:
        state = restore(mngr, state, graphdef, cfg)
        print(f"resumed from {mngr.directory / str(int(state.step))}", flush=True)
    state = jax.device_put(state, replicated)
    start = int(state.step)

    # Data
    val_images = input_pipeline.val_images(cfg.data)
    inputs = input_quality(val_images)
    batches = input_pipeline.train_iterator(
        cfg.data, batch_size=cfg.batch_size, seed=cfg.seed, start_step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip

    train_step = training.make_train_step(graphdef, tx, cfg.loss, cfg.stability)
    stability_probe = training.make_stability_probe(graphdef, cfg.stability.iters) if cfg.stability.every else None
    probe_input = stability_probe_input(val_images, cfg.data.crop_size)
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
            if stability_probe is not None and step % cfg.stability.every == 0:
                # Its own schedule: tying it to log steps silently skipped it when the periods differed.
                radii = stability_probe(state.params, batch["hazy"] if probe_input is None else probe_input, step)
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
                save(mngr, state, graphdef, cfg, val if step % cfg.eval_every == 0 or final else None)
    finally:
        bar.close()
        mngr.wait_until_finished()
        log.close()

    best_step, best_psnr = best_saved(mngr)
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


def main(argv: list[str]) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    cfg = _CONFIG.value
    if cfg.distributed:
        jax.distributed.initialize()  # coordinator, process count and id from the environment
    try:
        summary = train_and_evaluate(cfg, _WORKDIR.value)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"validation: dehazed PSNR {summary['val_psnr']:.2f} dB, SSIM {summary['val_ssim']:.4f} | "
        f"hazy input PSNR {summary['input_psnr']:.2f} dB, SSIM {summary['input_ssim']:.4f} "
        f"({summary['val_psnr'] - summary['input_psnr']:+.2f} dB)"
    )
    print(f"summary: {Path(_WORKDIR.value).resolve() / 'summary.json'}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
