"""The IM-block solvers: forward accuracy, gradients of every backward mode, backward statistics."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from flax import nnx

from minet_jax import solvers
from minet_jax.config import model_config, solver_config
from minet_jax.model import IMBlock, field_fn


def make_cfg(**overrides) -> ml_collections.FrozenConfigDict:
    """A solver config with `overrides` (any types: ConfigDict would refuse e.g. unroll=1)."""
    return ml_collections.FrozenConfigDict(dict(solver_config().to_dict(), **overrides))


def field(p, g):
    return jnp.tanh(p["W"] @ g + p["b"])


def problem(n: int = 12, norm: float = 0.45, seed: int = 0, symmetric: bool = False):
    """Float64 params (||W||_2 = norm) and g0 of a contractive tanh field."""
    rng = np.random.default_rng(seed)
    if symmetric:  # eigenvalues spread over [norm / 2, norm]: slow, near-linear contraction
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        w = q @ np.diag(np.linspace(norm / 2, norm, n)) @ q.T
    else:
        w = rng.normal(size=(n, n))
        w *= norm / np.linalg.norm(w, 2)
    params = {"W": jnp.asarray(w), "b": jnp.asarray(0.5 * rng.normal(size=n))}
    return params, jnp.asarray(rng.normal(size=n))


def exact_fixed_point(params, g0, eta):
    """g = g0 + eta tanh(W g + b) to machine precision, by a long numpy iteration."""
    w, b, g0 = (np.asarray(params["W"]), np.asarray(params["b"]), np.asarray(g0))
    g = g0.copy()
    for _ in range(5000):
        g_next = g0 + eta * np.tanh(w @ g + b)
        if np.array_equal(g_next, g):
            break
        g = g_next
    return g


def flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def rel_err(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def cosine(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def loss_fn(cfg, eta, T=8, weights=None):
    """(params, g0, stats slot) -> (sum(g* . weights), stats)."""

    def loss(params, g0, slot=None):
        g, stats = solvers.solve(field, params, g0, T=T, eta=eta, cfg=cfg, stats_slot=slot)
        w = jnp.arange(g.shape[-1], dtype=g.dtype) - 3.0 if weights is None else weights
        return jnp.sum(g * w), stats

    return loss


def grads(cfg, eta, params, g0, T=8, slot=None):
    """Gradients w.r.t. (params, g0[, stats slot]) of the test loss, jitted."""
    argnums = (0, 1) if slot is None else (0, 1, 2)
    fn = jax.jit(jax.grad(loss_fn(cfg, eta, T), argnums=argnums, has_aux=True))
    return (fn(params, g0) if slot is None else fn(params, g0, slot))[0]


EXACT = make_cfg(unroll=1)  # long unrolled solves as the reference gradient, T given per call
T_REF = 400  # contraction <= 0.45: converged far below 1e-12
_REFERENCE: dict[float, tuple] = {}


def reference_grads(eta: float):
    """Gradients of the test loss through a 400-step unrolled solve on `problem()` (cached)."""
    if eta not in _REFERENCE:
        _REFERENCE[eta] = grads(EXACT, eta, *problem(), T=T_REF)
    return _REFERENCE[eta]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("forward", ["fixed_point", "anderson"])
def test_iterative_forward_reaches_exact_fixed_point(forward, eta):
    params, g0 = problem()
    solver = getattr(solvers, forward)
    g, stats = jax.jit(lambda p, g0: solver(field, p, g0, eta=eta, tol=1e-12, max_iter=100))(params, g0)
    exact = exact_fixed_point(params, g0, eta)
    k = int(stats.iterations)
    assert 1 < k < 100 and float(stats.residual) < 1e-12
    assert np.linalg.norm(g - exact) / np.linalg.norm(exact) < 1e-11
    res = np.asarray(stats.residuals)
    assert res.shape == (100,) and res[k - 1] == float(stats.residual)
    assert np.all(np.isfinite(res[:k])) and np.all(np.isnan(res[k:]))
    assert np.all(res[: k - 1] >= 1e-12)  # it stopped at the first residual below tol


@pytest.mark.usefixtures("x64")
def test_fixed_point_with_zero_tol_is_the_unrolled_network():
    params, g0 = problem()
    g_u, s_u = solvers.unrolled(field, params, g0, T=7, eta=1.0)
    g_f, s_f = solvers.fixed_point(field, params, g0, eta=1.0, tol=0.0, max_iter=7)
    np.testing.assert_array_equal(g_f, g_u)
    np.testing.assert_array_equal(s_f.residuals, s_u.residuals)
    assert int(s_f.iterations) == int(s_u.iterations) == 7


def test_default_solve_is_the_plain_unrolled_scan():
    """The default config (and a stats slot) leave the T-step network's values untouched."""
    params, g0 = problem()
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    g0 = g0.astype(jnp.float32)
    g_ref, s_ref = solvers.unrolled(field, params, g0, T=3, eta=1.0, unroll="auto")
    cfg = ml_collections.FrozenConfigDict(solver_config())
    for slot in (None, jnp.zeros(2)):
        g, s = solvers.solve(field, params, g0, T=3, eta=1.0, cfg=cfg, stats_slot=slot)
        np.testing.assert_array_equal(g, g_ref)
        np.testing.assert_array_equal(s.residuals, s_ref.residuals)


@pytest.mark.usefixtures("x64")
def test_unrolled_written_out_and_restarted_is_the_same_iteration():
    """The one T-step iteration: traced step by step (for recorded statistics) it gives the scan's
    values, and started at its own T-step output it continues the sequence (phantom's restart)."""
    params, g0 = problem()
    g5, s5 = solvers.unrolled(field, params, g0, T=5, eta=0.7)
    loop, s_loop = solvers.unrolled(field, params, g0, T=5, eta=0.7, trace_each_step=True)
    np.testing.assert_allclose(loop, g5, rtol=1e-14, atol=0)
    np.testing.assert_allclose(s_loop.residuals, s5.residuals, rtol=1e-12, atol=0)
    g3, _ = solvers.unrolled(field, params, g0, T=3, eta=0.7)
    g3_then_2, _ = solvers.unrolled(field, params, g0, T=2, eta=0.7, start=g3)
    np.testing.assert_allclose(g3_then_2, g5, rtol=1e-14, atol=0)
    g4, _ = solvers.unrolled(field, params, g0, T=4, eta=0.7)
    assert np.max(np.abs(g4 - g5)) > 1e-6  # one step fewer is told apart


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "forward,backward_solver,eta",
    [
        ("fixed_point", "fixed_point", 1.0),
        ("fixed_point", "fixed_point", 0.5),
        ("anderson", "anderson", 1.0),
        ("fixed_point", "gmres", 0.5),
        pytest.param("anderson", "gmres", 1.0, marks=pytest.mark.slow),
        pytest.param("anderson", "anderson", 0.5, marks=pytest.mark.slow),
    ],
)
def test_implicit_gradient_equals_long_unrolled(forward, backward_solver, eta):
    params, g0 = problem()
    cfg = make_cfg(
        forward=forward, backward="implicit", tol=1e-13, max_iter=200,
        backward_solver=backward_solver, backward_tol=1e-13, backward_max_iter=200,
    )  # fmt: skip
    got = grads(cfg, eta, params, g0)
    want = reference_grads(eta)
    assert rel_err(got[0], want[0]) < 1e-6  # params
    assert rel_err(got[1], want[1]) < 1e-6  # g0


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "forward,backward",
    [
        ("unrolled", "unrolled"),
        ("fixed_point", "unrolled"),
        ("fixed_point", "implicit"),
        pytest.param("anderson", "unrolled", marks=pytest.mark.slow),
        pytest.param("anderson", "implicit", marks=pytest.mark.slow),
    ],
)
def test_check_grads(forward, backward):
    params, g0 = problem(n=6, seed=1)
    cfg = make_cfg(forward=forward, backward=backward, unroll=1, tol=1e-14, max_iter=200, backward_tol=1e-14)

    def fn(p, g0):
        return solvers.solve(field, p, g0, T=8, eta=1.0, cfg=cfg)[0]

    check_grads(jax.jit(fn), (params, g0), order=1, modes=["rev"])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("forward", ["fixed_point", "anderson"])
def test_differentiable_scan_matches_while_loop(forward):
    params, g0 = problem()
    solver = getattr(solvers, forward)
    (g_w, s_w), (g_s, s_s) = (
        solver(field, params, g0, eta=1.0, tol=1e-13, max_iter=60, differentiable=d) for d in (False, True)
    )
    assert int(s_w.iterations) == int(s_s.iterations) < 60
    np.testing.assert_allclose(s_s.residuals, s_w.residuals, rtol=1e-12)
    np.testing.assert_allclose(g_s, g_w, rtol=1e-12)
    # Backprop through the steps taken gives the gradient of the converged solve.
    cfg = make_cfg(forward=forward, backward="unrolled", tol=1e-13, max_iter=60, unroll=1)
    assert rel_err(grads(cfg, 1.0, params, g0), reference_grads(1.0)) < 1e-9


@pytest.mark.usefixtures("x64")
def test_anderson_needs_fewer_iterations_on_slow_contraction():
    params, g0 = problem(n=16, norm=0.95, seed=3, symmetric=True)
    # tanh in its linear regime: contraction close to 0.95
    params["b"] = 0.05 * params["b"]
    g0 = 0.05 * g0
    kw = {"eta": 1.0, "tol": 1e-10, "max_iter": 1000}
    _, s_fp = jax.jit(lambda p, g: solvers.fixed_point(field, p, g, **kw))(params, g0)
    _, s_aa = jax.jit(lambda p, g: solvers.anderson(field, p, g, m=5, **kw))(params, g0)
    n_fp, n_aa = int(s_fp.iterations), int(s_aa.iterations)
    assert float(s_fp.residual) < 1e-10 and float(s_aa.residual) < 1e-10
    assert n_aa * 3 < n_fp, f"anderson {n_aa} iterations vs fixed_point {n_fp}"


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_warm_start_reaches_the_same_fixed_point_in_fewer_iterations(solver):
    """x0 only moves where the iteration starts: from a nearby point (the cold solution of a
    slightly different g0) it needs fewer iterations for the same tolerance and lands on the same
    fixed point; from the fixed point itself one iteration."""
    params, g0 = problem(norm=0.8)
    kw = {"eta": 1.0, "tol": 1e-10, "max_iter": 500}
    run = getattr(solvers, solver)
    g_cold, s_cold = run(field, params, g0, **kw)
    near, _ = run(field, params, g0 + 1e-3, **kw)
    g_warm, s_warm = run(field, params, g0, x0=near, **kw)
    g_exact, s_exact = run(field, params, g0, x0=g_cold, **kw)
    assert float(s_warm.residual) < 1e-10 and int(s_warm.iterations) < int(s_cold.iterations)
    np.testing.assert_allclose(g_warm, g_cold, rtol=0, atol=1e-9 * float(jnp.abs(g_cold).max()))
    assert int(s_exact.iterations) == 1
    np.testing.assert_allclose(g_exact, g_cold, rtol=0, atol=1e-9 * float(jnp.abs(g_cold).max()))


@pytest.mark.usefixtures("x64")
def test_stats_slot_reports_adjoint_statistics():
    params, g0 = problem()
    cfg = make_cfg(forward="fixed_point", backward="implicit", tol=1e-12, backward_tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a converged adjoint must not warn
        slot_bar = grads(cfg, 1.0, params, g0, slot=jnp.zeros(2))[2]
        jax.effects_barrier()
    iterations, residual = np.asarray(slot_bar)
    assert 0 < iterations < cfg.backward_max_iter and residual < cfg.backward_tol


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("backward_solver", ["fixed_point", pytest.param("gmres", marks=pytest.mark.slow)])
def test_unconverged_adjoint_is_reported(backward_solver):
    """||J|| ~ 3: the adjoint iteration diverges; the stats slot and a warning both say so."""
    params, g0 = problem()
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(12, 12)))
    params = {"W": jnp.asarray(3.0 * q), "b": jnp.zeros(12)}
    g0 = 0.01 * g0
    cfg = make_cfg(backward="implicit", backward_solver=backward_solver, backward_max_iter=3)

    def backward_stats():
        slot_bar = grads(cfg, 1.0, params, g0, T=3, slot=jnp.zeros(2))[2]
        jax.effects_barrier()  # the warning comes from a jax.debug.callback
        return slot_bar

    with pytest.warns(RuntimeWarning, match="adjoint .* solve stopped at relative residual"):
        slot_bar = backward_stats()
    iterations, residual = np.asarray(slot_bar)
    assert iterations == 3 and residual > cfg.backward_tol


@pytest.mark.usefixtures("x64")
def test_stats_slot_counts_backpropagated_steps():
    params, g0 = problem()
    slot = jnp.zeros(2)
    cases = [
        (make_cfg(), [8, 0]),  # the T-step network
        (make_cfg(backward="phantom", phantom_steps=3), [3, 0]),
    ]
    for cfg, want in cases:
        np.testing.assert_array_equal(grads(cfg, 1.0, params, g0, slot=slot)[2], want)
    cfg = make_cfg(forward="fixed_point", tol=1e-8, unroll=1)
    (_, stats), (*_, slot_bar) = jax.jit(jax.value_and_grad(loss_fn(cfg, 1.0), (0, 1, 2), has_aux=True))(
        params, g0, slot
    )
    np.testing.assert_array_equal(slot_bar, [int(stats.iterations), 0])


@pytest.mark.usefixtures("x64")
def test_phantom_gradient():
    params, g0 = problem()
    eta = 1.0
    exact = reference_grads(eta)
    base = {"forward": "fixed_point", "tol": 1e-13, "max_iter": 200}

    one = grads(make_cfg(backward="phantom", phantom_steps=1, **base), eta, params, g0)
    assert rel_err(one, exact) > 1e-2  # Jacobian-free: not the exact gradient...
    assert cosine(one, exact) > 0.0  # ...but a descent direction
    many = grads(make_cfg(backward="phantom", phantom_steps=60, unroll=1, **base), eta, params, g0)
    assert rel_err(many, exact) < 1e-6

    # The value is the k steps restarted at g*, whose effect is nil at a converged g*.
    g_star, _ = solvers.fixed_point(field, params, g0, eta=eta, tol=1e-13, max_iter=200)
    g, _ = solvers.solve(field, params, g0, T=8, eta=eta, cfg=make_cfg(backward="phantom", **base))
    np.testing.assert_array_equal(g, g0 + eta * field(params, g_star))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "forward,backward",
    [
        ("fixed_point", "unrolled"),
        ("anderson", "implicit"),
        ("fixed_point", "phantom"),
        pytest.param("unrolled", "implicit", marks=pytest.mark.slow),
        pytest.param("anderson", "unrolled", marks=pytest.mark.slow),
    ],
)
def test_jit_vmap_grad_compose(forward, backward):
    params, _ = problem()
    g0s = jnp.asarray(np.random.default_rng(5).normal(size=(3, 12)))
    cfg = make_cfg(forward=forward, backward=backward, tol=1e-12, max_iter=60, unroll=1, backward_tol=1e-12)

    def run(p, g0):
        return solvers.solve(field, p, g0, T=8, eta=1.0, cfg=cfg)

    def loss(p, g0):
        return jnp.sum(run(p, g0)[0] ** 2)

    # jit against the un-jitted computation (every call outside jit compiles its loops anew)
    g_eager, s_eager = run(params, g0s[0])
    jit_run = jax.jit(run)
    per_example = [jit_run(params, g0) for g0 in g0s]
    np.testing.assert_allclose(per_example[0][0], g_eager, rtol=1e-12)
    assert int(per_example[0][1].iterations) == int(s_eager.iterations)
    # vmap against per-example solves
    g_vmap, s_vmap = jax.jit(jax.vmap(run, in_axes=(None, 0)))(params, g0s)
    for i, (g, s) in enumerate(per_example):
        np.testing.assert_allclose(g_vmap[i], g, rtol=1e-12)
        assert int(s_vmap.iterations[i]) == int(s.iterations)

    # grad of a vmapped loss against per-example gradients
    def batch_loss(p, g0s):
        return jnp.sum(jax.vmap(loss, in_axes=(None, 0))(p, g0s))

    dp, dg0s = jax.jit(jax.grad(batch_loss, argnums=(0, 1)))(params, g0s)
    single = jax.jit(jax.grad(loss, argnums=(0, 1)))
    singles = [single(params, g0) for g0 in g0s]
    assert rel_err(dp, jax.tree.map(lambda *x: sum(x), *[s[0] for s in singles])) < 1e-10
    assert rel_err(dg0s, jnp.stack([s[1] for s in singles])) < 1e-10


@pytest.mark.parametrize(
    "field_name,value",
    [("forward", "newton"), ("backward", "adjoint"), ("backward_solver", "cg")],
)
def test_unknown_option_raises(field_name, value):
    params, g0 = problem()
    with pytest.raises(ValueError, match=rf"solver\.{field_name} must be one of .*{value}"):
        solvers.solve(field, params, g0, T=2, eta=1.0, cfg=make_cfg(**{field_name: value}))


def test_minet_block_implicit_matches_unrolled():
    """On an IM-block of MI-Net (float32), implicit and long-unrolled parameter gradients agree."""
    block = IMBlock(model_config(), 8, dilation=2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block.f)
    f = field_fn(graphdef)
    rng = np.random.default_rng(6)
    g0 = jnp.asarray(rng.normal(size=(1, 12, 12, 8)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=g0.shape), jnp.float32)
    eta = 0.5  # the plain iteration converges to 1e-6 in 16 steps here (at eta = 1: 45)

    def param_grad(cfg, T):
        def loss(p):
            g, stats = solvers.solve(f, p, g0, T=T, eta=eta, cfg=cfg)
            return jnp.sum(g * weights), stats

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    imp, stats = param_grad(
        make_cfg(forward="fixed_point", backward="implicit", tol=1e-6, max_iter=100, backward_tol=1e-6), 0
    )
    unr, _ = param_grad(make_cfg(unroll=1), 40)
    assert float(stats.residual) < 1e-6
    assert cosine(imp, unr) > 0.99 and rel_err(imp, unr) < 1e-3


def test_one_step_is_written_out_not_a_loop():
    """A one-step scan stays a while loop (unroll 1 reads as rolled), and XLA's CPU backend then
    leaves its fast convolutions in the phantom k = 1 backward: T = 1 must trace no loop."""
    params, g0 = problem()
    jaxpr = str(jax.make_jaxpr(lambda p, g: solvers.unrolled(field, p, g, T=1, unroll=True)[0])(params, g0))
    assert "scan" not in jaxpr and "while" not in jaxpr
    want = g0 + field(params, g0)
    np.testing.assert_array_equal(solvers.unrolled(field, params, g0, T=1)[0], want)


def test_fan_out_max_combines_cotangents_by_maximum():
    """Each copy's cotangent is one group's report; the slot's gradient is their elementwise max."""
    slot = jnp.zeros(2)
    a, b, c = jnp.array([3.0, 0.5]), jnp.array([5.0, 0.1]), jnp.array([4.0, 0.7])

    def loss(s):
        x, y, z = solvers.fan_out_max(s, 3)
        return jnp.vdot(a, x) + jnp.vdot(b, y) + jnp.vdot(c, z)

    copies = solvers.fan_out_max(slot + 1.0, 3)
    assert len(copies) == 3 and all(np.array_equal(x, [1.0, 1.0]) for x in copies)
    np.testing.assert_array_equal(jax.grad(loss)(slot), np.array([5.0, 0.7], np.float32))
