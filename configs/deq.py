"""DEQ-MI-Net: every IM-block solved to a tolerance, with the implicit gradient and the Theorem 1
stability term, on configs/default.py's network and data.

    python train.py --config configs/deq.py --workdir runs/deq

Forward: Anderson acceleration (memory 5) of g <- g0 + eta f(g) until the relative residual is
< 1e-3, at most 30 evaluations of f. Backward: the implicit gradient, its adjoint
u = v + eta J^T u solved by Anderson to 1e-2 (at initialisation that gives a parameter gradient
of cosine > 0.99999 with the converged adjoint's: benchmarks/results/adjoint_tolerance_cpu).
Stability: the "radius" regulariser, weight 1, on each block's estimated rho(eta J_f) above 0.9,
so that the fixed point stays an attracting one (Theorem 1) as the weights move.

The solver study (`python -m minet_jax.tools.solver_study`) trains this solver on real haze as its
`deq` run (and without the term as `deq_no_stability`); its results say what it reaches there.
"""

from minet_jax.config import load_config


def get_config():
    c = load_config("default")
    s = c.model.solver
    s.forward, s.tol, s.max_iter, s.anderson_m = "anderson", 1e-3, 30, 5
    s.backward, s.backward_solver, s.backward_tol, s.backward_max_iter = "implicit", "anderson", 1e-2, 30
    c.stability.weight, c.stability.kind, c.stability.margin = 1.0, "radius", 0.9
    return c
