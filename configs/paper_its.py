"""The paper's recipe on RESIDE ITS: paper variant (T = 12, dilations 1/2/5, group-conv MLF,
feature RCA), RGB [0, 1].

    python train.py --config configs/paper_its.py --workdir runs/paper_its \
        --config.data.manual_dir=/data/RESIDE/ITS --config.data.sots_dir=/data/RESIDE/SOTS/indoor

Adam (beta1 0.99, beta2 0.999 as Sec. 4.2 states), lr 1e-3 times 0.1 every 20,000 iterations,
350,000 iterations, whole images. The paper gives no batch size or loss: batch 8 and MSE here.
Expected: the paper reports 35.51 dB PSNR and 0.9841 SSIM on SOTS indoor.
"""

from minet_jax.config import train_config


def get_config():
    c = train_config("paper")
    c.data.name = "reside_its"
    c.data.crop_size = 0
    c.data.flip = False
    c.data.val_name = "sots_indoor"
    c.batch_size = 8
    c.loss = "mse"
    c.lr = 1e-3
    c.adam_b1 = 0.99
    c.lr_decay_every = 20_000
    c.lr_decay_factor = 0.1
    c.num_steps = 350_000
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 5_000
    c.image_every = 20_000
    return c
