"""Solvers for an IM-block's fixed-point problem g = g0 + eta * f(params, g).

Every solver is a pure function of `(f, params, g0)`: `f(params, g)` must be pure and `params`
a pytree passed explicitly, so that gradient rules never close over traced values.

Forward solvers (`cfg.forward`), each returning `(g, SolverStats)`:

- `unrolled`: exactly T steps g <- g0 + eta f(g) from g = g0 (the paper's network, the default).
- `fixed_point`: the same iteration until the relative residual ||g_next - g|| / ||g|| < tol or
  max_iter steps.
- `anderson`: Anderson acceleration of that iteration, same stopping rule.

Backward modes (`cfg.backward`), independent of the forward:

- `unrolled`: backprop through the steps taken (for the iterative forwards a `lax.scan` over
  max_iter steps that freezes g once converged, so reverse mode works).
- `implicit`: implicit differentiation at the solution g*: the adjoint u = v + eta J_f(g*)^T u
  is solved with `cfg.backward_solver`, then params_bar = eta (df/dparams)^T u and g0_bar = u.
- `phantom`: backprop through `phantom_steps` extra steps restarted at stop_gradient(g*); the
  returned value is the result of those steps (so the forward value moves slightly, as in torchdeq).

Backward statistics through a stats slot. `solve(..., stats_slot=p)` takes an optional float
array `p` of shape (2,), normally zeros, as an extra differentiable input. The output does not
depend on it, but its cotangent (the gradient of the loss with respect to `p`) is

- implicit backward: `[adjoint iterations, final adjoint relative residual]`, where the residual is
  ||v - (I - eta J^T) u|| / ||v|| (for gmres, iterations counts whole restart cycles of
  min(backward_max_iter, 20) Krylov steps, an upper bound: jax's gmres does not report its count);
- unrolled and phantom backward: `[steps backpropagated, 0]`.

So a training step that also differentiates with respect to the slots reads the backward
statistics from their gradients. Under `vmap`, batch the slot too (in_axes=0) to get
per-example values (an unbatched slot gets the sum over examples of the data-dependent ones).
An adjoint solve that does not reach `backward_tol` also emits a `RuntimeWarning` (through
`jax.debug.callback`) naming the residual.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial, reduce
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
F = Callable[[Any, Array], Array]

FORWARDS = ("unrolled", "fixed_point", "anderson")
BACKWARDS = ("unrolled", "implicit", "phantom")
BACKWARD_SOLVERS = ("fixed_point", "anderson", "gmres")

_HIGHEST = jax.lax.Precision.HIGHEST


class SolverStats(NamedTuple):
    """Statistics of one solve (arrays, so they pass through jit and vmap)."""

    iterations: Array  # forward iterations taken
    residual: Array  # final relative residual ||G(g) - g|| / ||g|| (G(g) = g0 + eta f(g))
    residuals: Array  # residual after each iteration; NaN past `iterations`


def _real_dtype(x: Array):
    """At least float32 (bf16 inputs are measured in float32, float64 inputs in float64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _norm(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(_real_dtype(x)))))


def relative_residual(new: Array, old: Array) -> Array:
    """||new - old|| / ||old|| over the whole array (batch included), in at least float32."""
    dt = _real_dtype(new)
    num = jnp.sqrt(jnp.sum(jnp.square((new - old).astype(dt))))
    den = jnp.sqrt(jnp.sum(jnp.square(old.astype(dt))))
    return num / jnp.maximum(den, jnp.finfo(dt).tiny)


def resolve_unroll(unroll: int | bool | str, T: int) -> int | bool:
    """`"auto"` (or 0) unrolls fully on CPU (rolled scans backprop ~50x slower there) and not
    elsewhere; a positive int is scan's unroll factor (>= T unrolls fully)."""
    if unroll == "auto" or (unroll == 0 and not isinstance(unroll, bool)):
        return True if jax.default_backend() == "cpu" else 1
    if not isinstance(unroll, str):
        return unroll
    raise ValueError(f"solver.unroll must be an int, a bool or 'auto', got {unroll!r}")


def unrolled(
    f: F,
    params: Any,
    g0: Array,
    *,
    T: int,
    eta: float = 1.0,
    unroll: int | bool | str = 1,
    start: Array | None = None,
    trace_each_step: bool = False,
) -> tuple[Array, SolverStats]:
    """Exactly T steps of g <- g0 + eta f(g) from g = `start` (default g0): the paper's IM-block.

    The steps run in a `lax.scan`, which traces f once for all of them. `trace_each_step` writes
    them out as a Python loop instead, for code that must see every step's trace (the recorded
    and replayed whole-image statistics of global_stats.py, one set per step). T = 1 is always
    written out: a one-step scan stays a while loop (its unroll factor 1 reads as rolled), and
    XLA's CPU backend then lowers the convolutions of its backward to its generic, single-threaded
    path (the phantom k = 1 step took 5.4 s against 3.1 s for all eight unrolled steps).
    """

    def step(g, _):
        g_next = g0 + eta * f(params, g)
        return g_next, relative_residual(g_next, g)

    g = g0 if start is None else start
    if trace_each_step or T == 1:
        residuals = []
        for _ in range(T):
            g, r = step(g, None)
            residuals.append(r)
        residuals = jnp.stack(residuals)
    else:
        g, residuals = jax.lax.scan(step, g, None, length=T, unroll=resolve_unroll(unroll, T))
    stats = SolverStats(jnp.asarray(T, jnp.int32), residuals[-1], residuals)
    return g, stats


# --- iterative solvers: one step function, run by a while_loop or by a differentiable scan ---


class _Carry(NamedTuple):
    k: Array  # iterations taken
    x: Array  # next point to evaluate
    out: Array  # G of the last evaluated point: the solution returned
    res: Array  # last residual
    residuals: Array  # (max_iter,), NaN past k
    hist_x: Array  # Anderson: (m, size) past points; (0,) for fixed-point iteration
    hist_g: Array  # Anderson: (m, size) their images under G


def _init_carry(x0: Array, max_iter: int, m: int = 0) -> _Carry:
    rdt = _real_dtype(x0)
    hist = jnp.zeros((m, x0.size), x0.dtype) if m else jnp.zeros((0,), x0.dtype)
    return _Carry(
        k=jnp.asarray(0, jnp.int32), x=x0, out=x0, res=jnp.asarray(jnp.inf, rdt),
        residuals=jnp.full((max_iter,), jnp.nan, rdt), hist_x=hist, hist_g=hist,
    )  # fmt: skip


def _record(c: _Carry, r: Array) -> dict:
    return {"k": c.k + 1, "res": r, "residuals": c.residuals.at[c.k].set(r)}


def _fixed_point_step(G: Callable[[Array], Array], residual: Callable[[Array, Array], Array]):
    def step(c: _Carry) -> _Carry:
        gx = G(c.x)
        return c._replace(x=gx, out=gx, **_record(c, residual(gx, c.x)))

    return step


def _anderson_step(
    G: Callable[[Array], Array],
    residual: Callable[[Array, Array], Array],
    m: int,
    beta: float,
    lam: float,
):
    def step(c: _Carry) -> _Carry:
        gx = G(c.x)
        r = residual(gx, c.x)
        slot = c.k % m
        hist_x = c.hist_x.at[slot].set(c.x.reshape(-1))
        hist_g = c.hist_g.at[slot].set(gx.reshape(-1))
        dt = _real_dtype(c.x)
        valid = jnp.arange(m) < jnp.minimum(c.k + 1, m)
        h = (hist_g - hist_x).astype(dt)  # residuals G(x_i) - x_i of the stored points
        gram = jnp.where(valid[:, None] & valid[None, :], jnp.matmul(h, h.T, precision=_HIGHEST), 0)
        # Tikhonov term relative to the newest squared residual norm, so it neither vanishes nor
        # swamps the newest (smallest) residuals as they shrink; unused slots get a unit
        # diagonal, no border entry, and so a zero coefficient.
        scale = jnp.maximum(gram[slot, slot], jnp.finfo(dt).tiny)
        inner = gram + jnp.diag(jnp.where(valid, lam * scale, 1.0).astype(dt))
        border = valid.astype(dt)
        # Bordered system of min ||sum_i a_i h_i||^2 + reg ||a||^2 subject to sum_i a_i = 1.
        a = jnp.block([[jnp.zeros((1, 1), dt), border[None, :]], [border[:, None], inner]])
        rhs = jnp.zeros((m + 1,), dt).at[0].set(1)
        alpha = jnp.where(valid, jnp.linalg.solve(a, rhs)[1:], 0)
        mixed_g = jnp.matmul(alpha, hist_g.astype(dt), precision=_HIGHEST)
        mixed_x = jnp.matmul(alpha, hist_x.astype(dt), precision=_HIGHEST)
        x_next = (beta * mixed_g + (1 - beta) * mixed_x).reshape(c.x.shape).astype(c.x.dtype)
        return c._replace(x=x_next, out=gx, hist_x=hist_x, hist_g=hist_g, **_record(c, r))

    return step


def _iterate(
    step: Callable[[_Carry], _Carry],
    init: _Carry,
    *,
    tol: float,
    max_iter: int,
    differentiable: bool,
    unroll: int | bool | str = 1,
) -> _Carry:
    def done(c):
        return (c.k >= max_iter) | (c.res < tol)

    if not differentiable:
        return jax.lax.while_loop(lambda c: ~done(c), step, init)

    # Same steps, same order; once done the carry passes through unchanged (and so does its
    # cotangent), which gives reverse mode the steps actually taken.
    def body(c, _):
        return jax.lax.cond(done(c), lambda c: c, step, c), None

    c, _ = jax.lax.scan(body, init, None, length=max_iter, unroll=resolve_unroll(unroll, max_iter))
    return c


def _stats(c: _Carry) -> SolverStats:
    return SolverStats(c.k, c.res, c.residuals)


def fixed_point(
    f: F,
    params: Any,
    g0: Array,
    *,
    eta: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 50,
    differentiable: bool = False,
    unroll: int | bool | str = 1,
    x0: Array | None = None,
) -> tuple[Array, SolverStats]:
    """Iterate g <- g0 + eta f(g) from g = x0 (default g0: the IM-block's start) until
    ||g_next - g|| / ||g|| < tol or max_iter; `x0` is a warm start, e.g. an earlier solution.

    Returns the last iterate g_next. `differentiable=False` runs a `lax.while_loop` (no reverse
    mode); `True` runs a `lax.scan` of max_iter steps frozen once converged, with the same stats.
    """
    step = _fixed_point_step(lambda g: g0 + eta * f(params, g), relative_residual)
    c = _iterate(
        step, _init_carry(g0 if x0 is None else x0, max_iter), tol=tol, max_iter=max_iter,
        differentiable=differentiable, unroll=unroll,
    )  # fmt: skip
    return c.out, _stats(c)


def anderson(
    f: F,
    params: Any,
    g0: Array,
    *,
    eta: float = 1.0,
    tol: float = 1e-3,
    max_iter: int = 50,
    m: int = 5,
    beta: float = 1.0,
    lam: float = 1e-4,
    differentiable: bool = False,
    unroll: int | bool | str = 1,
    x0: Array | None = None,
) -> tuple[Array, SolverStats]:
    """Anderson-accelerated solve of g = G(g) := g0 + eta f(g) from g = x0 (default g0; a warm
    start, e.g. an earlier solution, otherwise).

    Memory m, damping beta (1 = undamped), Tikhonov regularisation lam (relative to the newest
    squared residual norm). The residual is that of the plain map at the current point x,
    ||G(x) - x|| / ||x||; the solve stops when it is < tol or after max_iter evaluations of f and
    returns G(x) at the last point. The mixing is over the whole array (batch included); vmap for
    per-example coefficients. `differentiable` as for `fixed_point`.
    """
    step = _anderson_step(lambda g: g0 + eta * f(params, g), relative_residual, m, beta, lam)
    c = _iterate(
        step, _init_carry(g0 if x0 is None else x0, max_iter, m), tol=tol, max_iter=max_iter,
        differentiable=differentiable, unroll=unroll,
    )  # fmt: skip
    return c.out, _stats(c)


# --- configuration ---


class _Spec(NamedTuple):
    """The solver configuration as hashable python values (a static argument of custom_vjp)."""

    forward: str
    backward: str
    T: int
    eta: float
    unroll: int | bool | str
    tol: float
    max_iter: int
    anderson_m: int
    anderson_beta: float
    anderson_lam: float
    backward_solver: str
    backward_tol: float
    backward_max_iter: int
    phantom_steps: int


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"solver.{name} must be one of {allowed}, got {value!r}")


def _check_positive(name: str, value: Any) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"solver.{name} must be a positive integer, got {value!r}")
    return int(value)


def _spec(cfg: Any, T: int, eta: float) -> _Spec:
    _check_choice("forward", cfg.forward, FORWARDS)
    _check_choice("backward", cfg.backward, BACKWARDS)
    _check_choice("backward_solver", cfg.backward_solver, BACKWARD_SOLVERS)
    resolve_unroll(cfg.unroll, T)  # validates
    return _Spec(
        forward=cfg.forward, backward=cfg.backward, T=int(T), eta=float(eta), unroll=cfg.unroll,
        tol=float(cfg.tol), max_iter=_check_positive("max_iter", cfg.max_iter),
        anderson_m=_check_positive("anderson_m", cfg.anderson_m),
        anderson_beta=float(cfg.anderson_beta), anderson_lam=float(cfg.anderson_lam),
        backward_solver=cfg.backward_solver, backward_tol=float(cfg.backward_tol),
        backward_max_iter=_check_positive("backward_max_iter", cfg.backward_max_iter),
        phantom_steps=_check_positive("phantom_steps", cfg.phantom_steps),
    )  # fmt: skip


def _forward(f: F, params: Any, g0: Array, s: _Spec, *, differentiable: bool) -> tuple[Array, SolverStats]:
    if s.forward == "unrolled":
        return unrolled(f, params, g0, T=s.T, eta=s.eta, unroll=s.unroll)
    if s.forward == "fixed_point":
        return fixed_point(
            f, params, g0, eta=s.eta, tol=s.tol, max_iter=s.max_iter, differentiable=differentiable,
            unroll=s.unroll,
        )  # fmt: skip
    return anderson(
        f, params, g0, eta=s.eta, tol=s.tol, max_iter=s.max_iter, m=s.anderson_m,
        beta=s.anderson_beta, lam=s.anderson_lam, differentiable=differentiable, unroll=s.unroll,
    )  # fmt: skip


# --- backward modes ---


@jax.custom_vjp
def _report(g: Array, slot: Array, value: Array) -> Array:
    """Identity on g whose backward hands `value` to the stats slot as its cotangent."""
    return g


def _report_fwd(g, slot, value):
    return g, value


def _report_bwd(value, ct):
    return ct, value, jnp.zeros_like(value)


_report.defvjp(_report_fwd, _report_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def fan_out_max(slot: Array, n: int) -> tuple[Array, ...]:
    """`n` copies of a stats slot whose cotangents combine by maximum, not sum: solves run on
    parts of a batch (model.batch_split) each report into one copy, and the slot's gradient is
    then the largest iteration count and residual among them."""
    return (slot,) * n


def _fan_out_max_fwd(slot, n):
    return (slot,) * n, None


def _fan_out_max_bwd(n, _, cts):
    return (reduce(jnp.maximum, cts),)


fan_out_max.defvjp(_fan_out_max_fwd, _fan_out_max_bwd)


def _tag(g: Array, slot: Array | None, steps: Array) -> Array:
    if slot is None:
        return g
    value = jnp.stack([jnp.asarray(steps, slot.dtype), jnp.zeros((), slot.dtype)])
    return _report(g, slot, jax.lax.stop_gradient(value))


def solve_adjoint(
    jt: Callable[[Array], Array],
    v: Array,
    *,
    eta: float,
    solver: str = "fixed_point",
    tol: float = 1e-5,
    max_iter: int = 50,
    m: int = 5,
    beta: float = 1.0,
    lam: float = 1e-4,
) -> tuple[Array, Array, Array]:
    """Solve u = v + eta J^T u, with `jt(u) = J^T u`. Returns (u, iterations, relative residual).

    The residual is ||v - (I - eta J^T) u|| / ||v||, of the last point whose residual was
    evaluated (fixed_point / anderson return one application of the map after it), or of the
    returned u (gmres: restart cycles of min(max_iter, 20) Krylov steps until the residual is
    < tol; iterations counts whole cycles, an upper bound on the matvecs).
    """
    _check_choice("backward_solver", solver, BACKWARD_SOLVERS)
    dt = _real_dtype(v)
    nv = jnp.maximum(_norm(v), jnp.finfo(dt).tiny)

    def G(u):
        return v + eta * jt(u)

    def residual(new, old):
        return _norm(new - old) / nv

    if solver == "gmres":
        # Restart cycles in a while_loop, so that the reported count stops near where it
        # converged (to within one cycle); jax's gmres itself reports no count.
        restart = min(max_iter, 20)
        cycles = math.ceil(max_iter / restart)

        def cycle(c):
            k, u, _ = c
            u, _ = jax.scipy.sparse.linalg.gmres(
                lambda w: w - eta * jt(w), v, x0=u, tol=tol, atol=0.0, restart=restart, maxiter=1,
                solve_method="incremental",
            )  # fmt: skip
            return k + 1, u, residual(G(u), u)

        init = (jnp.asarray(0, jnp.int32), v, jnp.asarray(jnp.inf, dt))
        k, u, res = jax.lax.while_loop(lambda c: (c[0] < cycles) & ~(c[2] < tol), cycle, init)
        return u, k * restart, res
    if solver == "fixed_point":
        step = _fixed_point_step(G, residual)
        init = _init_carry(v, max_iter)
    else:
        step = _anderson_step(G, residual, m, beta, lam)
        init = _init_carry(v, max_iter, m)
    c = _iterate(step, init, tol=tol, max_iter=max_iter, differentiable=False)
    return c.out, c.k, c.res


def _warn_unconverged(iterations, residual, *, tol: float, solver: str) -> None:
    residual = np.asarray(residual)
    if np.all(residual <= tol):
        return
    warnings.warn(
        f"implicit backward: the adjoint {solver} solve stopped at relative residual "
        f"{np.nanmax(residual) if not np.all(np.isnan(residual)) else np.nan:.3e} > "
        f"backward_tol {tol:.1e} after {np.max(iterations)} iterations; the gradient is inexact",
        RuntimeWarning,
        stacklevel=2,
    )


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _implicit(f: F, s: _Spec, params: Any, g0: Array, slot: Array) -> tuple[Array, SolverStats]:
    return _forward(f, params, g0, s, differentiable=False)


def _implicit_fwd(f, s, params, g0, slot):
    g, stats = _forward(f, params, g0, s, differentiable=False)
    return (g, stats), (params, g, jnp.zeros_like(slot))


def _implicit_bwd(f, s, res, ct):
    params, g, slot_zeros = res
    v = ct[0]  # the stats' cotangents are ignored: they are not differentiable quantities
    _, vjp = jax.vjp(f, params, g)
    u, iterations, residual = solve_adjoint(
        lambda u: vjp(u)[1], v, eta=s.eta, solver=s.backward_solver, tol=s.backward_tol,
        max_iter=s.backward_max_iter, m=s.anderson_m, beta=s.anderson_beta, lam=s.anderson_lam,
    )  # fmt: skip
    warn = partial(_warn_unconverged, tol=s.backward_tol, solver=s.backward_solver)
    jax.debug.callback(warn, iterations, residual)
    params_bar = vjp(s.eta * u)[0]
    stats = jnp.stack([iterations, residual]).astype(slot_zeros.dtype)
    return params_bar, u.astype(g.dtype), slot_zeros + stats


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def _phantom(f: F, params: Any, g0: Array, s: _Spec, slot: Array | None) -> tuple[Array, SolverStats]:
    sg = jax.lax.stop_gradient
    g_star, stats = _forward(f, sg(params), sg(g0), s, differentiable=False)
    k = s.phantom_steps
    g, _ = unrolled(f, params, g0, T=k, eta=s.eta, unroll=s.unroll, start=sg(g_star))
    return _tag(g, slot, jnp.asarray(k)), stats


def solve(
    f: F, params: Any, g0: Array, *, T: int, eta: float, cfg: Any, stats_slot: Array | None = None
) -> tuple[Array, SolverStats]:
    """Solve g = g0 + eta f(params, g) as `cfg` (a `config.solver_config()`) says.

    `cfg.forward` picks the forward solver (T is used by `unrolled` only; the others use tol and
    max_iter), `cfg.backward` the gradient. `stats_slot` (shape (2,)) receives the backward
    statistics as its cotangent; see the module docstring. The stats are those of the forward
    solve (for `phantom`, without the extra steps).
    """
    s = _spec(cfg, T, eta)
    if s.backward == "unrolled":
        g, stats = _forward(f, params, g0, s, differentiable=True)
        return _tag(g, stats_slot, stats.iterations), stats
    if s.backward == "implicit":
        slot = jnp.zeros((2,), jnp.float32) if stats_slot is None else stats_slot
        return _implicit(f, s, params, g0, slot)
    return _phantom(f, params, g0, s, stats_slot)
