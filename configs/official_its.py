"""The authors' recipe (their main.py) on RESIDE ITS: official network, BGR 0..255, their init.

    python train.py --config configs/official_its.py --workdir runs/official_its \
        --config.data.manual_dir=/data/RESIDE/ITS --config.data.sots_dir=/data/RESIDE/SOTS/indoor

Whole 620x460 images, no crops or flips, batch 8, loss ||out - gt||_2 (unsquared, over the batch,
0..255), Adam lr 0.01 (betas 0.9, 0.999) times 0.6 at epochs 10, 20, ..., 90, 220 epochs
(ITS: 13,990 images = 1,749 steps an epoch). Expected: SOTS indoor PSNR of the mean MSE near the
released weights' (about 36 dB on SOTS-mini, 35.5 dB reported on SOTS).
"""

from minet_jax.config import train_config

STEPS_PER_EPOCH = 13_990 // 8


def get_config():
    c = train_config("official")
    c.data.name = "reside_its"
    c.data.crop_size = 0
    c.data.flip = False
    c.data.val_name = "sots_indoor"
    c.batch_size = 8
    c.loss = "frobenius"
    c.lr = 0.01
    c.lr_decay_every = 10 * STEPS_PER_EPOCH
    c.lr_decay_factor = 0.6
    c.lr_decay_count = 9
    c.num_steps = 220 * STEPS_PER_EPOCH
    c.log_every = 100
    c.eval_every = STEPS_PER_EPOCH
    c.checkpoint_every = STEPS_PER_EPOCH
    c.image_every = 5 * STEPS_PER_EPOCH
    return c
