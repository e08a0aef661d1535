"""Tiny configuration for tests: a narrow network with few steps on a small synthetic set.

    python train.py --config configs/test.py --workdir /tmp/minet_test

Runs in well under a minute on a CPU; its numbers mean nothing beyond "the loop works".
"""

from minet_jax.config import train_config


def get_config():
    c = train_config("official")
    c.model.input_format = "rgb01"
    c.model.init = "identity"
    c.model.channels = 8
    c.model.T = 2
    c.batch_size = 2
    c.data.crop_size = 16
    c.data.val_limit = 2
    c.num_steps = 6
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    c.image_every = 3
    c.stability.every = 3  # not a multiple of log_every: the probe keeps its own schedule
    c.stability.iters = 4
    c.grid_images = 1
    c.progress = False
    return c
