"""The fields every training config has, with defaults; `configs/*.py` start from `base_config()`."""

from __future__ import annotations

import ml_collections

from minet_jax.model_config import model_config


def base_config(variant: str = "official") -> ml_collections.ConfigDict:
    """Training defaults; see configs/default.py for what they train."""
    from minet_jax.input_pipeline import data_config  # noqa: PLC0415 (keeps grain/tfds lazy)

    c = ml_collections.ConfigDict()
    c.model = model_config(variant)
    c.data = data_config()
    c.seed = 0
    c.num_steps = 150
    c.batch_size = 4
    c.loss = "mse"  # mse | l1 | frobenius (the authors': ||out - gt||_2 on 0..255)
    c.lr = 2e-3
    c.lr_decay_every = 0  # steps between step decays (0 = constant)
    c.lr_decay_factor = 0.5
    c.lr_decay_count = 0  # how many decays at most (0 = no limit)
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.grad_clip = 0.0  # global-norm clipping (0 = off)
    c.log_every = 10
    c.eval_every = 50
    c.checkpoint_every = 50
    c.keep_checkpoints = 3  # the last K; the best by validation PSNR is kept besides
    c.image_every = 100  # hazy | dehazed | clear grid of validation images
    c.grid_images = 3
    c.progress = True  # tqdm progress bar
    # Multi-host: call jax.distributed.initialize() (SLURM, TPU pods and Cloud TPU fill in the
    # coordinator and process ids from the environment); each process reads its own data shard.
    c.distributed = False
    # Theorem 1 while training: every `every` steps log an Arnoldi estimate of each block's
    # spectral radius of eta J_f (0 = never); `weight` > 0 adds a Jacobian regulariser to the loss.
    c.stability = ml_collections.ConfigDict(
        dict(every=50, iters=20, weight=0.0, kind="frobenius", margin=0.9, num_probes=1)
    )
    return c
