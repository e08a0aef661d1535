"""The checkpoint format, in one place: what a checkpoint holds, saving, loading, resuming.

A model checkpoint is an orbax composite directory with two items, `params` (the NNX parameter
state as a pure dict) and `model_config` (JSON). A training checkpoint is one step directory of
an orbax CheckpointManager (`WORKDIR/checkpoints/STEP`) holding those two items and
`train_state` (optimiser state and step) and `meta` (step, seed, data position, validation
metrics), so both kinds load as models here. `load_pretrained` also reads the authors' `.pth`
(through torch_pickle, no pickled code run, and convert's name map).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from minet_jax.config import OBSOLETE_MODEL_KEYS, model_config, model_config_from, with_overrides
from minet_jax.convert import torch_to_flat_params
from minet_jax.model import MINet
from minet_jax.torch_pickle import load_torch_file


def params_of(model: MINet) -> dict:
    """The model's parameters as a pure nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def config_dict(model: MINet) -> dict:
    """The model configuration as plain JSON-able data."""
    return json.loads(model.config.to_json())


def build_model(cfg: Mapping | ml_collections.ConfigDict, seed: int = 0) -> MINet:
    """A fresh model from a (possibly partial) configuration, defaults from its variant."""
    cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return MINet(model_config_from(cfg), rngs=nnx.Rngs(seed))


def abstract_model(cfg: dict | ml_collections.ConfigDict) -> MINet:
    """The model's structure with shape-only parameters (no random initialisation cost)."""
    return nnx.eval_shape(lambda: build_model(cfg))


def model_from_flat_params(cfg, flat: dict[str, np.ndarray], source: str) -> MINet:
    """A model of configuration `cfg` holding `flat` ({dotted path: array}); every parameter
    must be given with its exact shape."""
    graphdef, state = nnx.split(abstract_model(cfg))
    expected = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(state)}
    missing, unknown = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{source} does not fit the {cfg['variant'] if isinstance(cfg, dict) else cfg.variant} "
            f"MI-Net: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    for path, var in expected.items():
        if tuple(var.shape) != tuple(flat[path].shape):
            raise ValueError(f"{source}: {path} has shape {flat[path].shape}, expected {tuple(var.shape)}")
        var.set_value(jax.numpy.asarray(flat[path], var.dtype))
    return nnx.merge(graphdef, state)


def save_model(model: MINet, path: str | Path) -> Path:
    """Write `model` as a checkpoint directory at `path` (which must not exist yet)."""
    path = Path(path).resolve()
    if path.exists():
        raise FileExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params_of(model)),
                model_config=ocp.args.JsonSave(config_dict(model)),
            ),
        )
    return path


def _step_dir(path: Path) -> Path:
    """Accept a step directory, or a CheckpointManager root (then its newest step)."""
    if (path / "params").is_dir():
        return path
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if steps:
        return steps[-1][1]
    raise ValueError(
        f"{path} is not a minet-jax checkpoint: expected a 'params' item (or numbered step "
        "directories holding one); write one with `python -m minet_jax.tools.convert` or train.py"
    )


class CheckpointError(OSError):
    """A checkpoint that cannot be read or written (the message names it and says why, in one line)."""


def reason(e: BaseException) -> str:
    """The first line of an exception's message, with its type where the message is empty."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def load_checkpoint_model(path: str | Path, **overrides) -> MINet:
    """Rebuild the model a checkpoint directory was saved from, with its parameters."""
    path = _step_dir(Path(path).resolve())
    if not (path / "model_config").is_dir():
        raise ValueError(f"{path} has no model_config item; cannot tell which network it holds")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        try:
            saved = ckptr.restore(path, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))["model_config"]
        except Exception as e:  # damaged JSON or orbax metadata
            raise CheckpointError(f"cannot read checkpoint {path}: {reason(e)}") from e
        graphdef, state = nnx.split(abstract_model(with_overrides(model_config_from(saved), overrides)))
        # Explicit single-device shardings: a checkpoint written from 8 GPUs loads on one CPU.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state)
        )
        try:
            restored = ckptr.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
        except Exception as e:  # tensorstore errors of a truncated or damaged array file
            raise CheckpointError(f"cannot read checkpoint {path}: {reason(e)}") from e
    nnx.replace_by_pure_dict(state, restored["params"])
    return nnx.merge(graphdef, state)


def load_pretrained(path: str | Path, **overrides) -> MINet:
    """A ready model from the authors' `.pth` weights or from a minet-jax checkpoint directory.

    `overrides` change model settings that hold no parameters, e.g. `dtype="bfloat16"`,
    `precision="highest"`, `T=16` or `solver={"forward": "fixed_point", "tol": 1e-3}`.

    `dtype="bfloat16"` rounds the convolutions' inputs and kernels to bf16 (parameters and
    normalisation statistics stay float32). On a GPU or TPU the convolutions then run in bf16. On
    the CPU (JAX 0.10.2) XLA converts every bf16 convolution back to float32 (the optimised HLO
    holds only f32 convolutions), so bf16 there computes in float32 on bf16-rounded values: no
    faster (2026-12-03, 2-core AMD EPYC: README's speed table) and within 0.001 dB on SOTS-mini."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if p.is_file():
        return load_torch_weights(p, **overrides)
    return load_checkpoint_model(p, **overrides)


# Model fields that fix the parameters' shapes or what they mean (input_format: the convention the
# weights expect). `initial_params` requires a run's config to match its source in these; T, eta,
# the solver, dtype, precision and the implementations stay the run's own.
ARCHITECTURE_KEYS = (
    "variant", "channels", "dilations", "smooth_dilated", "mlf_groups", "rca", "rca_reduction", "input_format",
)  # fmt: skip


def initial_params(model_cfg: Mapping | ml_collections.ConfigDict, path: str | Path) -> dict:
    """The parameters of `path` (the authors' `.pth` or a minet-jax checkpoint) to start a run of
    model config `model_cfg` from, as a pure dict. ValueError naming every architecture field
    (ARCHITECTURE_KEYS) in which the config and the checkpoint differ."""
    source = load_pretrained(path)
    saved = config_dict(source)
    want = json.loads(model_cfg.to_json()) if isinstance(model_cfg, ml_collections.ConfigDict) else dict(model_cfg)
    diff = config_diff({k: saved.get(k) for k in ARCHITECTURE_KEYS}, {k: want.get(k) for k in ARCHITECTURE_KEYS})
    if diff:
        raise ValueError(
            f"{path} holds another architecture than the config (model.{'; model.'.join(diff)}): set those "
            "fields to the checkpoint's values"
        )
    return params_of(source)


def load_torch_weights(path: str | Path, **overrides) -> MINet:
    """The official MI-Net holding the weights of a PyTorch `.pth` file; `overrides` change
    settings that hold no parameters (e.g. dtype="bfloat16", T=12, solver={"forward": ...});
    what bfloat16 computes on each backend: `load_pretrained`."""
    flat = torch_to_flat_params(load_torch_file(path))
    return model_from_flat_params(with_overrides(model_config("official"), overrides), flat, source=str(path))


# --- training checkpoints ---

TRAIN_ITEMS = ("params", "train_state", "model_config", "meta")
# How a layer is computed, not what it computes: free to differ between a checkpoint and its resume.
IMPLEMENTATION_KEYS = ("share_sep_impl", "conv_vjp", "batch_split", "remat")


class ConfigMismatch(ValueError):
    """A training checkpoint was made for another model config or seed (the message lists how)."""


UNREADABLE_DIR = "checkpoints_unreadable"  # beside checkpoints/: where unreadable steps are moved


def checkpoint_manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
    """The manager of `WORKDIR/checkpoints`: keeps the last `keep` steps and the best by `val_psnr`.

    Saves are synchronous: a save that fails (full disk, read-only folder) must stop the run at
    that step, naming the path, and the state is a few MB, so asynchronous saves would buy little.
    Half-written step folders of an earlier crash are removed when the manager opens."""
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(keep),
            pp.BestN(get_metric_fn=lambda m: m["val_psnr"], reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(workdir) / "checkpoints", options=options, item_names=TRAIN_ITEMS)


def _remove_partial(directory: Path) -> None:
    for p in directory.glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(p, ignore_errors=True)


def config_diff(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """`key: checkpoint A, config B` for every model setting that differs (implementation keys and
    settings this version no longer has are ignored)."""
    ignored = set(IMPLEMENTATION_KEYS) | set(OBSOLETE_MODEL_KEYS) if not prefix else set()
    diffs = []
    for key in sorted((set(saved) | set(current)) - ignored):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
    return diffs


def save_train_state(mngr: ocp.CheckpointManager, state: Any, cfg: ml_collections.ConfigDict, val: dict | None) -> None:
    """Save a training state (`training.TrainState`) at its step, with `val` as the step's metrics."""
    step = int(state.step)
    directory = Path(mngr.directory)
    # A failing save makes orbax and tensorstore print hundreds of lines of tracebacks from their
    # threads straight to stderr; they are held back and, if the save fails, go to a log file.
    with tempfile.TemporaryFile() as held:
        error = None
        with _stderr_to(held):
            try:
                _save(mngr, step, state, cfg, val)
            except Exception as e:  # OSError / ValueError from tensorstore or the file system, in orbax's wrapping
                error = e
        held.seek(0)
        noise = held.read().decode(errors="replace")
    if error is None:
        sys.stderr.write(noise)  # what a good save printed (warnings) is not lost
        return
    _remove_partial(directory)
    shutil.rmtree(directory / str(step), ignore_errors=True)  # never a half-written step
    mngr.reload()
    details = ""
    try:
        log = directory.parent / "checkpoint_error.log"
        log.write_text(f"{error!r}\n{noise}")
        details = f" (details: {log})"
    except OSError:
        pass  # the disk that refused the checkpoint may refuse the log too
    raise CheckpointError(f"could not write checkpoint {directory / str(step)}: {reason(error)}{details}") from error


@contextlib.contextmanager
def _stderr_to(file) -> Iterator[None]:
    """Point file descriptor 2 (where C++ threads write too) at `file` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _save(mngr: ocp.CheckpointManager, step: int, state: Any, cfg: ml_collections.ConfigDict, val: dict | None) -> None:
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(nnx.to_pure_dict(state.params)),
            train_state=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
            model_config=ocp.args.JsonSave(json.loads(cfg.model.to_json())),
            meta=ocp.args.JsonSave({"step": step, "seed": cfg.seed, "data_position": step, "val": val}),
        ),
        metrics={"val_psnr": val["val_psnr"]} if val else None,
    )


def restore_newest_readable(
    mngr: ocp.CheckpointManager, state: Any, cfg: ml_collections.ConfigDict, say: Callable[[str], None] = print
) -> Any | None:
    """`state` restored from the newest checkpoint that can be read, or None where there is none.
    The newer ones that cannot be read are then moved aside to `WORKDIR/checkpoints_unreadable/`
    (not deleted) with a line each through `say`. Where none can be read, nothing is moved (that
    is more likely another version's format than damage) and `CheckpointError` names the newest;
    `ConfigMismatch` is raised as it is."""
    directory = Path(mngr.directory)
    failed: list[tuple[int, Exception]] = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = restore_train_state(mngr, state, cfg, step)
        except ConfigMismatch:
            raise
        except Exception as e:  # a truncated or damaged file: tensorstore, JSON or orbax errors
            failed.append((step, e))
            continue
        for bad, e in failed:
            aside = directory.parent / UNREADABLE_DIR / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(directory / str(bad)), aside)
            say(f"checkpoint {directory / str(bad)} cannot be read ({reason(e)}): moved to {aside}")
        mngr.reload()
        return restored
    if failed:
        step, e = failed[0]
        raise CheckpointError(f"no checkpoint in {directory} can be read; the newest, {step}: {reason(e)}") from e
    return None


def restore_train_state(
    mngr: ocp.CheckpointManager, state: Any, cfg: ml_collections.ConfigDict, step: int | None = None
) -> Any:
    """`state` (a freshly initialised `training.TrainState`) with a checkpoint's (the newest's by
    default) parameters, optimiser state and step; `ConfigMismatch` for one made for another model
    or seed."""
    step = mngr.latest_step() if step is None else step
    saved = mngr.restore(
        step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    diffs = config_diff(saved["model_config"], json.loads(cfg.model.to_json()))
    if diffs:
        raise ConfigMismatch(
            f"checkpoint {mngr.directory / str(step)} was made for another model config:\n  " + "\n  ".join(diffs)
        )
    if saved["meta"]["seed"] != cfg.seed:
        raise ConfigMismatch(f"checkpoint at step {step} used seed {saved['meta']['seed']}, config says {cfg.seed}")
    target_params = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
    target_ts = jax.tree.map(np.asarray, {"opt_state": state.opt_state, "step": state.step})
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target_params), train_state=ocp.args.StandardRestore(target_ts)
        ),
    )
    params = state.params
    nnx.replace_by_pure_dict(params, out["params"])
    opt_state = jax.tree.map(
        lambda t, v: jax.numpy.asarray(v, t.dtype), state.opt_state, out["train_state"]["opt_state"]
    )
    return state._replace(step=jax.numpy.asarray(out["train_state"]["step"]), params=params, opt_state=opt_state)


def best_saved(mngr: ocp.CheckpointManager) -> tuple[int | None, float | None]:
    """(step, validation PSNR) of the best kept checkpoint, from their `meta` items."""
    best = (None, None)
    for step in mngr.all_steps():
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        val = meta.get("val")
        if val and (best[1] is None or val["val_psnr"] > best[1]):
            best = (step, val["val_psnr"])
    return best
