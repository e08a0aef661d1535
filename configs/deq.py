"""DEQ-MI-Net: every IM-block solved to a tolerance, with the implicit gradient and the Theorem 1
stability term, on configs/default.py's network and data.

    python train.py --config configs/deq.py --workdir runs/deq

Forward: Anderson acceleration (memory 5) of g <- g0 + eta f(g) until the relative residual is
< 1e-3, at most 30 evaluations of f. Backward: the implicit gradient, its adjoint
u = v + eta J^T u solved by Anderson to 1e-2 (at initialisation that gives a parameter gradient
of cosine > 0.99999 with the converged adjoint's: benchmarks/results/adjoint_tolerance_cpu).
Stability: the "radius" regulariser, weight 1, on each block's estimated rho(eta J_f) above 0.6,
so that the fixed point stays an attracting one (Theorem 1) as the weights move. The margin is
well under 1 because the term sees training crops and rho is larger on whole images: with a
margin of 0.9 the third block reached rho 0.67 on 64 px crops (the term never acted) but 1.035 on
whole validation images, where its forward then stopped at the 30-evaluation cap. The term is
estimated on the first example of each batch with 4 power steps (`stability.batch`,
`stability.power_iters`): on all 8 examples with 8 steps it made the step 1.30x the unrolled one's.

What it reaches (the solver study's scratch track, `python -m minet_jax.tools.solver_study
--preset cpu --tracks scratch --runs deq`, 400 steps of 8 x 64 px crops of real haze, 2-core CPU,
2026-12-07, one seed): 18.08 dB / SSIM 0.810 on all 80 sots-indoor-val images (the unrolled T = 8
run of the same budget: 18.12 dB), every block converged to 1e-3 on every whole 620x460
validation image in at most 5 Anderson iterations, rho(eta J_f) on whole images at most
0.39 / 0.68 / 0.51: Theorem 1 holds. Its training step at the final checkpoint took 0.82-0.86x
the unrolled one's time, 0.87x its resident peak and 0.66x its XLA buffers
(benchmarks/results/solver_study_cpu_partial/scratch_deq_sub1). With the term on all 8 examples
the same run reached 17.84 dB, also converged everywhere (scratch_deq_margin0.6).
The study trains it as its `deq` run (and without the term as `deq_no_stability`).
For less memory add `--set model.remat=true` (the encoder, pre-processing and decoder recomputed
in the backward pass): the step's resident peak 1099 -> 1001 MiB at 8 x 64 px, XLA's buffers
348 -> 237 MiB (at the initialisation, 2026-12-08, benchmarks/results/solver_steps_cpu_20261208).
"""

from minet_jax.config import load_config


def get_config():
    c = load_config("default")
    s = c.model.solver
    s.forward, s.tol, s.max_iter, s.anderson_m = "anderson", 1e-3, 30, 5
    s.backward, s.backward_solver, s.backward_tol, s.backward_max_iter = "implicit", "anderson", 1e-2, 30
    c.stability.weight, c.stability.kind, c.stability.margin = 1.0, "radius", 0.6
    c.stability.batch, c.stability.power_iters = 1, 4
    return c
