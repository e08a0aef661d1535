"""Model checkpoints in orbax: parameters plus the model configuration that built them.

A model checkpoint is an orbax composite directory with two items, `params` (the NNX parameter
state as a pure dict) and `model_config` (JSON). Training checkpoints (one step directory of an
orbax CheckpointManager) hold the same two items beside others, so both load here.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from minet_jax.model import MINet
from minet_jax.model_config import model_config


def params_of(model: MINet) -> dict:
    """The model's parameters as a pure nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def config_dict(model: MINet) -> dict:
    """The model configuration as plain JSON-able data."""
    return json.loads(model.config.to_json())


def build_model(cfg: dict | ml_collections.ConfigDict, seed: int = 0) -> MINet:
    """A fresh model from a (possibly partial) configuration, defaults from its variant."""
    cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    full = model_config(cfg.get("variant", "official"))
    full.update(_tuples(cfg))
    return MINet(full, rngs=nnx.Rngs(seed))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` settings for `with_overrides` (VALUE as JSON, else a Python literal such as
    `True` or `(1, 2)`, else a string); `solver.tol=1e-3` nests as {"solver": {"tol": 0.001}}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        head, _, sub = key.partition(".")
        if sub:
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    return out


def with_overrides(cfg: dict | ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `overrides` applied (nested dicts merge, e.g. solver={"forward": ...})."""
    cfg = ml_collections.ConfigDict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else _tuples(cfg))
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(cfg))}")
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = tuple(value) if isinstance(value, list) else value
    return cfg


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


def _tuples(d: dict) -> dict:
    # JSON turns tuples into lists; ConfigDict refuses list -> tuple type changes.
    return {k: (_tuples(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


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
        "directories holding one); write one with `python -m minet_jax.convert` or train.py"
    )


def load_checkpoint_model(path: str | Path, **overrides) -> MINet:
    """Rebuild the model a checkpoint directory was saved from, with its parameters."""
    path = _step_dir(Path(path).resolve())
    if not (path / "model_config").is_dir():
        raise ValueError(f"{path} has no model_config item; cannot tell which network it holds")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        cfg = ckptr.restore(path, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))
        graphdef, state = nnx.split(abstract_model(with_overrides(cfg["model_config"], overrides)))
        # Explicit single-device shardings: a checkpoint written from 8 GPUs loads on one CPU.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(state))
        restored = ckptr.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    nnx.replace_by_pure_dict(state, restored["params"])
    return nnx.merge(graphdef, state)


def load_pretrained(path: str | Path, **overrides) -> MINet:
    """A ready model from the authors' `.pth` weights or from a minet-jax checkpoint directory.

    `overrides` change model settings that hold no parameters, e.g. `dtype="bfloat16"`,
    `precision="highest"`, `T=16` or `solver={"forward": "fixed_point", "tol": 1e-3}`."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if p.is_file():
        from minet_jax.convert import load_torch_weights  # noqa: PLC0415

        return load_torch_weights(p, **overrides)
    return load_checkpoint_model(p, **overrides)
