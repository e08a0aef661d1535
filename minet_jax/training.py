"""Training pieces: optimiser and schedule, loss, and the jitted train / eval steps.

The steps are pure functions over `nnx.split` state (flax's NNX performance guide): the graphdef
is static, parameters and optimiser state are plain pytrees, so the jitted step does no graph
traversal.
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from minet_jax.image_io import to_uint8
from minet_jax.inference import from_network, to_network
from minet_jax.jacobian import block_fields, jacobian_penalty, spectral_radius_estimate
from minet_jax.metrics import psnr, ssim
from minet_jax.model import MINet

LOSSES = ("mse", "l1", "frobenius")


class TrainState(NamedTuple):
    """Everything a training step changes (a pytree; checkpointed whole)."""

    step: jax.Array
    params: Any  # nnx.State of the model's parameters
    opt_state: Any
    last_good: jax.Array  # False once a non-finite loss or gradient was met (update skipped)


def learning_rate_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Step decay: lr * factor every `lr_decay_every` steps, at most `lr_decay_count` times."""
    if cfg.lr_decay_every <= 0:
        return optax.constant_schedule(cfg.lr)
    if cfg.lr_decay_count > 0:
        bounds = {k * cfg.lr_decay_every: cfg.lr_decay_factor for k in range(1, cfg.lr_decay_count + 1)}
        return optax.piecewise_constant_schedule(cfg.lr, bounds)
    return optax.exponential_decay(cfg.lr, cfg.lr_decay_every, cfg.lr_decay_factor, staircase=True)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the configured step decay (and optional global-norm clipping)."""
    adam = optax.adam(learning_rate_schedule(cfg), b1=cfg.adam_b1, b2=cfg.adam_b2)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam)
    return adam


def new_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """Step 0 at `params`, with a fresh optimiser state."""
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jnp.ones((), bool))


def init_state(model: MINet, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, step-0 state) of `model`: the parameters split out of the module graph."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, new_state(params, tx)


def loss_value(kind: str, out: jax.Array, clear: jax.Array) -> jax.Array:
    """Loss on RGB [0, 1]. `frobenius` is the authors': ||out - gt||_2 over the batch, 0..255."""
    if kind == "mse":
        return jnp.mean(jnp.square(out - clear))
    if kind == "l1":
        return jnp.mean(jnp.abs(out - clear))
    if kind == "frobenius":
        return jnp.sqrt(jnp.sum(jnp.square((out - clear) * 255.0)))
    raise ValueError(f"config.loss must be one of {LOSSES}, got {kind!r}")


def batch_psnr(out: jax.Array, clear: jax.Array) -> jax.Array:
    """Mean per-image PSNR (dB) of outputs clipped to [0, 1]."""
    mse = jnp.mean(jnp.square(jnp.clip(out, 0.0, 1.0) - clear), axis=(1, 2, 3))
    return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-12)))


def _forward(graphdef, params, hazy, stats_slots=None):
    model = nnx.merge(graphdef, params)
    fmt = model.config.input_format
    y, aux = model(to_network(hazy, fmt), with_aux=True, stats_slots=stats_slots)
    return from_network(y, fmt), aux


def _stability_penalty(graphdef, params, block_outputs, key, cfg) -> jax.Array:
    """Sum over IM-blocks of a Jacobian regulariser of f at the block's output iterate, on the
    first `cfg.batch` examples (0 = all). f acts on each example alone (instance norms), so its
    Jacobian is block-diagonal over the batch: the radius term sees the largest radius among the
    sub-batch's examples (random crops, so a random sample), the Frobenius term their mean."""
    fields = block_fields(nnx.merge(graphdef, params))
    keys = jax.random.split(key, len(fields))
    n = int(cfg.get("batch", 0))
    return sum(
        jacobian_penalty(
            f, p, g[:n] if n else g, k, kind=cfg.kind, eta=eta, samples=cfg.samples, margin=cfg.margin,
            power_iters=int(cfg.get("power_iters", 8)),
        )
        for (_, _, f, p, eta), g, k in zip(fields, block_outputs, keys, strict=True)
    )


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss: str,
    stability: ml_collections.ConfigDict | None = None,
):
    """The jitted `(state, batch) -> (state, metrics)`; a non-finite loss or gradient leaves the
    parameters untouched and clears `state.last_good`, which the loop checks. With
    `stability.weight > 0` the loss adds that weight times a Jacobian regulariser of each block's
    f (`stability.kind`: "frobenius" Hutchinson ||J||_F^2 or "radius" above `stability.margin`)."""
    weight = float(stability.weight) if stability is not None else 0.0

    def loss_fn(params, stats_slots, batch, key):
        out, aux = _forward(graphdef, params, batch["hazy"], stats_slots)
        value = loss_value(loss, out, batch["clear"])
        penalty = jnp.zeros((), jnp.float32)
        if weight > 0:
            penalty = _stability_penalty(graphdef, params, aux["block_outputs"], key, stability)
        aux["stability_penalty"] = penalty
        return value + weight * penalty, (value, out, aux)

    @jax.jit
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        # The stats slots' gradient carries each block's backward-solve [iterations, residual].
        slots = jnp.zeros((3, 2), jnp.float32)
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        key = jax.random.fold_in(jax.random.key(0), state.step)  # a function of the step: resumable
        (total, (value, out, aux)), (grads, backward) = grad_fn(state.params, slots, batch, key)
        gnorm = optax.tree.norm(grads)
        finite = jnp.isfinite(total) & jnp.isfinite(gnorm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), state.last_good & finite
        )
        stats = aux["solver_stats"]
        metrics = {
            "loss": value,
            "grad_norm": gnorm,
            "train_psnr": batch_psnr(out, batch["clear"]),
            "stability/penalty": aux["stability_penalty"],
            **{f"solver/block{i + 1}_iterations": s.iterations for i, s in enumerate(stats)},
            **{f"solver/block{i + 1}_residual": s.residual for i, s in enumerate(stats)},
            **{f"solver/block{i + 1}_backward_iterations": backward[i, 0] for i in range(len(stats))},
            **{f"solver/block{i + 1}_backward_residual": backward[i, 1] for i in range(len(stats))},
        }
        return new_state, metrics

    return train_step


class DivergenceWatch:
    """Stops a run whose loss jumps: a step's loss over `ratio` times the median of the last
    `window` steps' losses. The median, not the lowest so far: fine-tuning the authors' converged
    network on batches of two 128 px crops, healthy losses spread from 3.6e-4 to 6.2e-2, and a
    lowest-so-far test stopped the run at step 197 (0.052 after 3.6e-4 at step 179)."""

    def __init__(self, ratio: float, window: int = 100):
        self.ratio = ratio
        self.recent: collections.deque[float] = collections.deque(maxlen=window)

    def reference(self) -> float:
        return float(np.median(self.recent)) if self.recent else float("inf")

    def diverging(self, loss: float) -> bool:
        """Whether `loss` counts as diverging against the steps before it; then records it."""
        bad = bool(self.ratio) and loss > self.ratio * self.reference()
        if not bad:
            self.recent.append(loss)
        return bad


def make_radius_monitor(graphdef: nnx.GraphDef, iters: int = 20):
    """The jitted `(params, hazy, step) -> {name: estimate}`: per block, a cheap Arnoldi estimate of
    the spectral radius of eta J_f at the block's output iterate (Theorem 1 asks for < 1)."""

    @jax.jit
    def monitor(params, hazy, step):
        _, aux = _forward(graphdef, params, hazy[:1])
        fields = block_fields(nnx.merge(graphdef, params))
        key = jax.random.fold_in(jax.random.key(1), step)
        return {
            f"stability/block{i + 1}_radius": spectral_radius_estimate(
                f, p, jax.lax.stop_gradient(g), eta=eta, iters=iters, key=jax.random.fold_in(key, i)
            )
            for i, ((_, _, f, p, eta), g) in enumerate(zip(fields, aux["block_outputs"], strict=True))
        }

    return monitor


def radius_monitor_input(val_images: list[dict], crop_size: int) -> np.ndarray | None:
    """The radius monitor's input: a fixed central crop (training crop size, else 128) of the
    first validation image, so that its curve follows the parameters and not the batch.
    None (monitor the batch instead) without validation images."""
    if not val_images:
        return None
    img = val_images[0]["hazy"]
    s = min(int(crop_size) or 128, *img.shape[:2])
    y, x = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
    return np.ascontiguousarray(img[None, y : y + s, x : x + s])


def make_predict(graphdef: nnx.GraphDef):
    """The jitted `(params, hazy NHWC RGB [0, 1]) -> unclamped RGB [0, 1]`."""

    @jax.jit
    def predict(params, hazy):
        return _forward(graphdef, params, hazy)[0]

    return predict


def validate(predict, params, images: list[dict]) -> tuple[dict, list[np.ndarray]]:
    """Mean PSNR / SSIM of the outputs rounded to uint8 against the clear images, how many outputs
    held non-finite values, and the outputs themselves."""
    p, s, outs, bad = [], [], [], 0
    for ex in images:
        out = np.asarray(predict(params, ex["hazy"][None]))[0]
        bad += int(not np.isfinite(out).all())
        out_u8, clear_u8 = to_uint8(out), to_uint8(ex["clear"])
        p.append(psnr(out_u8, clear_u8))
        s.append(ssim(out_u8, clear_u8))
        outs.append(out)
    return {"val_psnr": float(np.mean(p)), "val_ssim": float(np.mean(s)), "val_nonfinite": bad}, outs


def input_quality(images: list[dict]) -> dict:
    """The hazy inputs' own PSNR / SSIM against the clear images (what dehazing must beat)."""
    hz = [(to_uint8(ex["hazy"]), to_uint8(ex["clear"])) for ex in images]
    return {
        "input_psnr": float(np.mean([psnr(a, b) for a, b in hz])),
        "input_ssim": float(np.mean([ssim(a, b) for a, b in hz])),
    }
