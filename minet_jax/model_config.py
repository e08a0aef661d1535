"""Model configurations of the two MI-Net variants.

`official` is the authors' released network (see ../shared/design/official-architecture.md); their
weights fit it. `paper` is the network as the paper describes it; where the paper is ambiguous the
choices are written next to the field.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("official", "paper")


def solver_config() -> ml_collections.ConfigDict:
    """How each IM-block solves g = g0 + eta f(g). The default is the exact T-step network."""
    return ml_collections.ConfigDict(
        dict(
            forward="unrolled",  # unrolled | fixed_point | anderson
            backward="unrolled",  # unrolled | implicit | phantom
            # lax.scan unroll factor (an int, so --config overrides work); 0 = auto: fully unrolled
            # on CPU, where backprop through a rolled scan of convolutions is ~50x slower
            # (jax#12868), rolled (1) elsewhere.
            unroll=0,
            tol=1e-3,  # relative residual ||g_next - g|| / ||g|| for fixed_point / anderson
            max_iter=50,
            anderson_m=5,
            anderson_beta=1.0,  # damping: 1 = undamped
            anderson_lam=1e-4,  # Tikhonov regularisation of the mixing least-squares problem
            backward_solver="fixed_point",  # fixed_point | anderson | gmres (implicit backward)
            backward_tol=1e-5,
            backward_max_iter=50,
            phantom_steps=1,  # k for the phantom backward (1 = Jacobian-free backprop)
        )
    )


def model_config(variant: str = "official") -> ml_collections.ConfigDict:
    """Default model configuration for `variant` ("official" or "paper")."""
    if variant not in VARIANTS:
        raise ValueError(f"model.variant must be one of {VARIANTS}, got {variant!r}")
    cfg = ml_collections.ConfigDict(
        dict(
            variant=variant,
            channels=64,
            T=8,
            dilations=(1, 2, 4),
            # ShareSepConv(2d-1) before each dilated conv of blocks with d > 1 (authors' code).
            smooth_dilated=True,
            eta=1.0,
            # MLF gate conv 3C -> 3: 1 = plain conv (authors' code), 3 = group conv (paper).
            mlf_groups=1,
            # Channel attention: "image" = on the 3-channel output with scalar affine "MLP"
            # (authors' code); "features" = on the fused C-channel features before the decoder
            # with a two-layer MLP C -> C/r -> C (paper, Fig. 5).
            rca="image",
            rca_reduction=16,
            # What the network sees: "bgr255" = BGR on 0..255 (authors' weights); "rgb01" = RGB
            # on [0, 1] (trains much faster from scratch).
            input_format="bgr255",
            # "pytorch": the authors' initialisation; "identity": output path started near the
            # identity (conv_su2 = deconv = I, conv_su1 ~ 0, attention closed) for training.
            init="pytorch",
            dtype="float32",  # compute dtype of the convolutions ("bfloat16" for mixed precision)
            precision="",  # jax.lax.Precision name for convolutions, e.g. "highest"; "" = default
            # Weight gradient of the convolutions: "xla" (XLA's own) or "im2col" (one GEMM of image
            # patches, minet_jax/conv.py; "auto" = im2col on CPU only). Forward values are
            # identical. im2col triples a training step's XLA memory, and whether it is faster on
            # CPU is not settled yet (noisy measurements disagree), so XLA's stays the default.
            conv_impl="xla",
            # ShareSepConv (one k x k kernel on every channel): "shift" (k^2 shifted copies with a
            # hand-written gradient, minet_jax/conv.py; ~20x faster than XLA's depthwise
            # convolution on CPU), "shift_autodiff" (the same sums, JAX's own gradient), "xla", or
            # "auto" = shift on CPU, xla elsewhere. Same values.
            share_sep_impl="auto",
            solver=solver_config(),
        )
    )
    if variant == "paper":
        cfg.T = 12  # Sec. 4.2: T1 = T2 = T3 = 12
        cfg.dilations = (1, 2, 5)  # Sec. 4.2: dilated rates x1, x2, x5
        # Choice: the paper names no smoothing of dilated convolutions (it relies on HDC).
        cfg.smooth_dilated = False
        # Choice: "MLF is a group convolutional layer" read as 3 groups, so W_i is computed from
        # x_i alone (3x3 kernel and bias kept from the code).
        cfg.mlf_groups = 3
        # Choice: RCA on the fused features (Fig. 2, Eq. 8-9), MLP reduction 16 as in SE-Net
        # [18], which the paper cites for it; ReLU between the two layers.
        cfg.rca = "features"
        cfg.rca_reduction = 16
        cfg.input_format = "rgb01"
        cfg.init = "identity"
    return cfg
