"""Default: the released MI-Net architecture trained from scratch on the embedded synthetic haze.

    python train.py                      # same as: python train.py --config configs/default.py

The data are made at first run from scikit-image's sample photos (physically based haze,
I = J t + A (1 - t), t = exp(-beta d), A in [0.7, 1], beta in [0.6, 1.8]); validation photos are
not used in training. The network sees RGB on [0, 1] with its output path started near the
identity (the authors' BGR 0..255 convention learns slowly from scratch). Every training crop
gets new haze (data.fresh_haze), batches are 16 crops of 32 px (as many pixels as 4 of 64 px,
four times the examples), and lr halves every 30 steps.

Measured on a 2-core x86-64 CPU (2026-12-02, JAX 0.10.2): see README's first lines for the time
and the validation PSNR it reaches (runs are deterministic for a seed).
"""

from minet_jax.config import train_config


def get_config():
    c = train_config("official")
    c.model.input_format = "rgb01"
    c.model.init = "identity"
    c.batch_size = 16
    c.data.crop_size = 32
    c.data.fresh_haze = True
    c.lr_decay_every = 30
    return c
