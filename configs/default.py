"""Default: the released MI-Net architecture trained from scratch on the embedded synthetic haze.

    python train.py                      # same as: python train.py --config configs/default.py

The data are made at first run from scikit-image's sample photos (physically based haze,
I = J t + A (1 - t), t = exp(-beta d), A in [0.7, 1], beta in [0.6, 1.8]); validation photos are
not used in training. The network sees RGB on [0, 1] with its output path started near the
identity (the authors' BGR 0..255 convention learns slowly from scratch).
Expected on a 2-core CPU: about 3 minutes (measured 183 s: 150 steps of ~1.1 s plus compilation
and validation); validation PSNR 20.14 dB against the hazy input's 15.12 dB (+5.0 dB; runs are
deterministic for a seed).
"""

from minet_jax.config import train_config


def get_config():
    c = train_config("official")
    c.model.input_format = "rgb01"
    c.model.init = "identity"
    return c
