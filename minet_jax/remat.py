"""Recompute a segment of the network in the backward pass instead of keeping its activations.

`jax.checkpoint` asks for the same thing, but on XLA's CPU backend it saved nothing here (XLA's
buffers for the training step 1038 -> 1042 MiB; 15.7 -> 15.8 MiB in tests/test_remat.py's shape):
the optimisation barriers meant to keep the recomputation apart are gone from the optimised
program (seen for the barriers of a custom VJP: 12 lowered, 0 after XLA's passes), so nothing
stops XLA from merging the recomputation with the forward or running it early.
Here the backward recomputes from its input made to depend on the incoming cotangent
(`x + 0 * ct[0]`, which XLA does not fold for floats), so the recomputation can neither be merged
with the forward nor scheduled before the backward reaches the segment. MI-Net's full-resolution
encoder with the pre-processing blocks, and its decoder, so treated (`model.remat`): XLA's buffers
for the training step (128x128, batch 4, T=8) 1022 -> 853 MiB unrolled, 412 -> 243 MiB implicit,
for 23 GFLOP more per step (counted), 1.15x the implicit step's time and 1.18x phantom's
(alternated in one process, medians of 9); the update bitwise equal (2-core CPU, JAX 0.10.2,
2026-12-08).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array


def after(x: Array, ct: Array) -> Array:
    """`x`, as a value XLA must compute after `ct` (same values, unless ct[0] is not finite)."""
    return x + (0 * ct.ravel()[0]).astype(x.dtype)


def recomputed(fn: Callable[[Any, Array], Array]) -> Callable[[Any, Array], Array]:
    """`fn(params, x)` whose reverse-mode derivative keeps only `params` and `x` and recomputes
    `fn`'s intermediates in the backward pass. Reverse mode only (a custom_vjp): call `fn`
    itself under jvp / jacfwd."""

    @jax.custom_vjp
    def segment(params, x):
        return fn(params, x)

    def fwd(params, x):
        return fn(params, x), (params, x)

    def bwd(res, ct):
        params, x = res
        _, vjp = jax.vjp(fn, params, after(x, ct))
        return vjp(ct)

    segment.defvjp(fwd, bwd)
    return segment
