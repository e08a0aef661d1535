"""MI-Net in Flax NNX (NHWC).

Layer names follow the authors' code where one exists (conv1, norm1, ..., gate, deconv3, ...), so
that the weight conversion in `convert.py` is a plain renaming plus layout changes.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from minet_jax import conv, global_stats, remat, solvers
from minet_jax.config import model_config

Array = jax.Array

# Kaiming normal, negative slope 0.1, fan-in (the authors' init of every nn.Conv2d).
_kaiming = jax.nn.initializers.variance_scaling(2.0 / (1.0 + 0.1**2), "fan_in", "normal")
# PyTorch's default for the transposed convolution and linear layers (kaiming_uniform, a = sqrt 5).
_torch_default = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _dtype(cfg: ml_collections.ConfigDict):
    return jnp.dtype(cfg.dtype)


def _precision(cfg: ml_collections.ConfigDict):
    return jax.lax.Precision[cfg.precision.upper()] if cfg.precision else None


def share_sep_impl(cfg: ml_collections.ConfigDict) -> str:
    """`cfg.share_sep_impl` with "auto" resolved for the current backend."""
    impl = cfg.get("share_sep_impl", "auto")
    if impl == "auto":
        # XLA's CPU depthwise convolution is ~20x slower than the shifted sum (conv.py); on GPU
        # cuDNN's is the measured-and-trusted default.
        impl = "shift" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv_vjp(cfg: ml_collections.ConfigDict) -> str:
    """`cfg.conv_vjp` with "auto" resolved for the current backend."""
    mode = cfg.get("conv_vjp", "auto")
    if mode == "auto":
        # Only XLA's CPU backend misses its fast path for JAX's input-gradient form inside while
        # loops (conv.py); elsewhere JAX's own rule is kept.
        mode = "explicit" if jax.default_backend() == "cpu" else "lax"
    if mode not in ("explicit", "lax"):
        raise ValueError(f"model.conv_vjp must be 'auto', 'explicit' or 'lax', got {mode!r}")
    return mode


def _conv(cfg, cin, cout, k, *, stride=1, dilation=1, bias=False, groups=1, init=_kaiming, explicit_vjp=False, rngs):
    pad = dilation * (k - 1) // 2
    fn = conv.conv_general_dilated_explicit_vjp if explicit_vjp else jax.lax.conv_general_dilated
    if k == 1 and groups == 1:
        fn = conv.conv_general_dilated_1x1_as_dot
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation, use_bias=bias, feature_group_count=groups, kernel_init=init,
        dtype=_dtype(cfg), precision=_precision(cfg), conv_general_dilated=fn, rngs=rngs,
    )  # fmt: skip


def _norm(c: int, rngs: nnx.Rngs) -> nnx.InstanceNorm:
    # PyTorch InstanceNorm2d(affine=True): biased variance, eps 1e-5, no running statistics.
    # Statistics in float32 even under bf16 compute. The subclass can replay whole-image
    # statistics for tiled inference (global_stats.py) and is nnx.InstanceNorm otherwise.
    return global_stats.InstanceNorm(c, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32, rngs=rngs)


class ShareSepConv(nnx.Module):
    """One k x k kernel applied depthwise to every channel alike (initialised to the identity).

    `impl`: "shift" (conv.shared_depthwise_conv: shifted sums with a hand-written gradient, fast
    on CPU, reverse mode only), "shift_autodiff" (the same sums differentiated by JAX, any mode:
    what the Jacobian probes use) or "xla" (XLA's depthwise convolution)."""

    IMPLS = ("shift", "shift_autodiff", "xla")

    def __init__(self, k: int, impl: str = "xla"):
        if impl not in self.IMPLS:
            raise ValueError(f"model.share_sep_impl must be 'auto' or one of {self.IMPLS}, got {impl!r}")
        self.kernel = nnx.Param(jnp.zeros((k, k), jnp.float32).at[k // 2, k // 2].set(1.0))
        self.impl = impl

    def __call__(self, x: Array) -> Array:
        op = {
            "shift": conv.shared_depthwise_conv,
            "shift_autodiff": conv.shifted_sum,
            "xla": conv.shared_depthwise_conv_lax,
        }[self.impl]
        return op(x, self.kernel[...])


class TransposedConv(nnx.Module):
    """PyTorch ConvTranspose2d(cin, cout, 4, stride=2, padding=1) with bias. The kernel is stored
    spatially flipped, HWIO (convert.py does the flip), as nnx.Conv's over the 2x-dilated input
    padded by 2 would be; it is computed as `conv.conv_transpose_2x` (measured 5.7x faster with its
    gradients on the CPU; not yet timed on a GPU, where it does 2.25x the multiply-adds)."""

    def __init__(self, cfg, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_torch_default(rngs.params(), (4, 4, cin, cout), jnp.float32))
        # Zeros, drawing a key as nnx.Conv does, so every later layer's init is unchanged.
        self.bias = nnx.Param(jax.nn.initializers.zeros(rngs.params(), (cout,), jnp.float32))
        self.dtype, self.precision = _dtype(cfg), _precision(cfg)

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        y = conv.conv_transpose_2x(x.astype(dt), self.kernel[...].astype(dt), precision=self.precision)
        return y + self.bias[...].astype(dt)


class ResidualBlock(nnx.Module):
    """Pre-processing block: ReLU(x + IN(conv2(ReLU(IN(conv1(x))))))."""

    def __init__(self, cfg, c: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cfg, c, c, 3, rngs=rngs)
        self.norm1 = _norm(c, rngs)
        self.conv2 = _conv(cfg, c, c, 3, rngs=rngs)
        self.norm2 = _norm(c, rngs)

    def __call__(self, x: Array) -> Array:
        y = self.norm1.relu(self.conv1(x))
        return jax.nn.relu(x + self.norm2(self.conv2(y)))


class IMField(nnx.Module):
    """The vector field f of an IM-block: ReLU(IN(conv2(S(ReLU(IN(conv1_d(S(x)))))))).

    S is an optional ShareSepConv(2d - 1) smoothing before each conv (d > 1, authors' code).
    With `conv_vjp` "explicit" the two convolutions have a reverse-mode-only gradient whose
    input gradient is a forward convolution (conv.py): the solvers' while loops need it on CPU.
    """

    def __init__(self, cfg, c: int, dilation: int, *, rngs: nnx.Rngs):
        smooth = cfg.smooth_dilated and dilation > 1
        impl = share_sep_impl(cfg)
        explicit = conv_vjp(cfg) == "explicit"
        self.pre_conv1 = ShareSepConv(2 * dilation - 1, impl) if smooth else None
        self.conv1 = _conv(cfg, c, c, 3, dilation=dilation, explicit_vjp=explicit, rngs=rngs)
        self.norm1 = _norm(c, rngs)
        self.pre_conv2 = ShareSepConv(2 * dilation - 1, impl) if smooth else None
        self.conv2 = _conv(cfg, c, c, 3, explicit_vjp=explicit, rngs=rngs)
        self.norm2 = _norm(c, rngs)

    def __call__(self, x: Array) -> Array:
        if self.pre_conv1 is not None:
            x = self.pre_conv1(x)
        y = self.norm1.relu(self.conv1(x))
        if self.pre_conv2 is not None:
            y = self.pre_conv2(y)
        return self.norm2.relu(self.conv2(y))


def field_fn(graphdef: nnx.GraphDef) -> solvers.F:
    """A pure `f(params, g)` for an IMField's graphdef, as the solvers and probes want it."""

    def f(params, g):
        return nnx.merge(graphdef, params)(g).astype(g.dtype)

    return f


class IMBlock(nnx.Module):
    """Solves g = g0 + eta f(g) from g = g0 (T steps by default) with weights shared over steps."""

    def __init__(self, cfg, c: int, dilation: int, *, rngs: nnx.Rngs):
        self.f = IMField(cfg, c, dilation, rngs=rngs)
        self.T = cfg.T
        self.eta = float(cfg.eta)
        self.solver = ml_collections.FrozenConfigDict(cfg.solver)

    def __call__(self, g0: Array, stats_slot: Array | None = None) -> tuple[Array, solvers.SolverStats]:
        """`stats_slot`: optional (2,) zeros whose gradient reports the backward solve (solvers.py)."""
        graphdef, params = nnx.split(self.f)
        f = field_fn(graphdef)
        if global_stats.active():
            # Recording or replaying statistics: each step's norms are statistics of their own, so
            # every step must be traced (a scan traces f once for all T).
            if self.solver.forward != "unrolled":
                raise ValueError(
                    "whole-image statistics for tiling need model.solver.forward='unrolled', "
                    f"got {self.solver.forward!r}"
                )
            return solvers.unrolled(f, params, g0, T=self.T, eta=self.eta, trace_each_step=True)
        return solvers.solve(f, params, g0, T=self.T, eta=self.eta, cfg=self.solver, stats_slot=stats_slot)


class ResidualSteps(nnx.Module):
    """Explicit-Euler residual blocks x <- x + eta f_k(x), k = 1..n, each f_k an IMField with its
    own weights: Table 2's Resblock-1 (n = 1, the IM-block's first step) and Resblock-T (n = T,
    the IM-block's compute with T times its parameters)."""

    def __init__(self, cfg, c: int, dilation: int, n: int, *, rngs: nnx.Rngs):
        self.fields = nnx.List([IMField(cfg, c, dilation, rngs=rngs) for _ in range(n)])
        self.eta = float(cfg.eta)

    def __call__(self, x: Array, stats_slot: Array | None = None) -> tuple[Array, solvers.SolverStats]:
        """`stats_slot` is accepted for MINet's sake and unused: there is no backward solve."""
        residuals = []
        for f in self.fields:
            x_next = x + self.eta * f(x).astype(x.dtype)
            residuals.append(solvers.relative_residual(x_next, x))
            x = x_next
        residuals = jnp.stack(residuals)
        return x, solvers.SolverStats(jnp.asarray(len(self.fields), jnp.int32), residuals[-1], residuals)


class ImageAttention(nnx.Module):
    """The authors' RCA on the 3-channel image: x + x * sigmoid(l3(l2(GAP(c0(x)))))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.c0 = _conv(cfg, 3, 3, 1, bias=True, rngs=rngs)
        # l2 and l3 are scalar affine maps shared by all channels (Linear(1, 1) in PyTorch).
        self.l2_w = nnx.Param(_torch_default(rngs.params(), (1, 1)))
        self.l2_b = nnx.Param(jax.random.uniform(rngs.params(), (1,), minval=-1.0, maxval=1.0))
        self.l3_w = nnx.Param(_torch_default(rngs.params(), (1, 1)))
        self.l3_b = nnx.Param(jax.random.uniform(rngs.params(), (1,), minval=-1.0, maxval=1.0))

    def __call__(self, x: Array) -> Array:
        v = global_stats.spatial_mean(self.c0(x).astype(jnp.float32))
        v = v * self.l2_w[0, 0] + self.l2_b[0]
        v = v * self.l3_w[0, 0] + self.l3_b[0]
        return x + x * jax.nn.sigmoid(v).astype(x.dtype)


class FeatureAttention(nnx.Module):
    """The paper's RCA on C-channel features: x + x * sigmoid(MLP(GAP(conv1x1(x))))."""

    def __init__(self, cfg, c: int, reduction: int, *, rngs: nnx.Rngs):
        hidden = max(1, c // reduction)
        self.conv = _conv(cfg, c, c, 1, bias=True, rngs=rngs)
        self.fc1 = nnx.Linear(c, hidden, kernel_init=_torch_default, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, c, kernel_init=_torch_default, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        v = global_stats.spatial_mean(self.conv(x).astype(jnp.float32))
        v = self.fc2(jax.nn.relu(self.fc1(v)))
        return x + x * jax.nn.sigmoid(v).astype(x.dtype)


class ChannelAttention(nnx.Module):
    """The ordinary attention of Table 2's OA column: CBAM's channel attention (Woo et al. 2018,
    the paper's [40]), x * sigmoid(MLP(GAP(x)) + MLP(GMP(x))) with one MLP C -> C/r -> C, in the
    RCA's place (on the image or on the features, as `model.rca` says)."""

    def __init__(self, cfg, c: int, reduction: int, *, rngs: nnx.Rngs):
        hidden = max(1, c // reduction)
        self.fc1 = nnx.Linear(c, hidden, kernel_init=_torch_default, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, c, kernel_init=_torch_default, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if global_stats.active():  # it records means, not maxima
            raise ValueError("model.attention='oa' takes a global max, which approximate tilings cannot replay")
        x32 = x.astype(jnp.float32)
        mlp = lambda v: self.fc2(jax.nn.relu(self.fc1(v)))  # noqa: E731
        v = mlp(jnp.mean(x32, axis=(1, 2), keepdims=True)) + mlp(jnp.max(x32, axis=(1, 2), keepdims=True))
        return x * jax.nn.sigmoid(v).astype(x.dtype)


# Independent groups of images a batch is split into on the CPU (model.batch_split = 0). XLA's
# CPU runtime runs each YNNPACK convolution of a 64x64 feature map on one core, and ops that do
# not depend on each other at once: two chains of images keep both cores busy. Training steps,
# one process, variants alternated, medians of 9 (2-core EPYC, 2026-12-05), 1 / 2 / 4 groups:
# 128x128 batch 4 T=8 2.56 / 1.93 / 2.68 s (4 groups swings between 2.0 and 3.0 s); 32x32
# batch 16 (the default run) 0.67 / 0.51 / 0.50 s, 8 groups 0.59 s. Only 2 cores were measured.
AUTO_BATCH_SPLIT_CPU = 2


def batch_split(cfg: ml_collections.ConfigDict, batch: int) -> int:
    """How many groups of images `MINet` runs a batch of `batch` as: `cfg.batch_split` (0 = auto:
    AUTO_BATCH_SPLIT_CPU on the CPU, 1 elsewhere), lowered to a divisor of `batch`."""
    n = int(cfg.get("batch_split", 0))
    if n < 0:
        raise ValueError(f"model.batch_split must be >= 0 (0 = auto), got {n}")
    if n == 0:
        n = AUTO_BATCH_SPLIT_CPU if jax.default_backend() == "cpu" else 1
    n = max(1, min(n, batch))
    while batch % n:
        n -= 1
    return n


def _merge_aux(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One aux dict from those of a batch's groups: arrays joined along the batch, solver
    statistics the worst group's (largest count and residual; NaN entries ignored)."""
    cat = lambda key: [jnp.concatenate(xs) for xs in zip(*(p[key] for p in parts), strict=True)]  # noqa: E731
    stats = [
        solvers.SolverStats(*(reduce(jnp.fmax, fields) for fields in zip(*per_group, strict=True)))
        for per_group in zip(*(p["solver_stats"] for p in parts), strict=True)
    ]
    return {"block_inputs": cat("block_inputs"), "block_outputs": cat("block_outputs"), "solver_stats": stats}


def _block(cfg, c: int, dilation: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.block == "im":
        return IMBlock(cfg, c, dilation, rngs=rngs)
    if cfg.block in ("resblock1", "resblockT"):
        return ResidualSteps(cfg, c, dilation, 1 if cfg.block == "resblock1" else cfg.T, rngs=rngs)
    raise ValueError(f"model.block must be 'im', 'resblock1' or 'resblockT', got {cfg.block!r}")


class MINet(nnx.Module):
    """The multi-level implicit network. Input and output NHWC in `cfg.input_format`'s space."""

    def __init__(self, cfg: ml_collections.ConfigDict | None = None, *, rngs: nnx.Rngs | None = None):
        cfg = model_config() if cfg is None else cfg
        rngs = nnx.Rngs(0) if rngs is None else rngs
        if len(cfg.dilations) != 3:
            raise ValueError(f"model.dilations must name 3 dilations, got {tuple(cfg.dilations)}")
        if cfg.rca not in ("image", "features"):
            raise ValueError(f"model.rca must be 'image' or 'features', got {cfg.rca!r}")
        if cfg.attention not in ("rca", "oa", "none"):
            raise ValueError(f"model.attention must be 'rca', 'oa' or 'none', got {cfg.attention!r}")
        self.config = ml_collections.FrozenConfigDict(cfg)
        c = cfg.channels
        self.conv1 = _conv(cfg, 3, c, 3, rngs=rngs)
        self.norm1 = _norm(c, rngs)
        self.conv2 = _conv(cfg, c, c, 3, rngs=rngs)
        self.norm2 = _norm(c, rngs)
        self.conv3 = _conv(cfg, c, c, 3, stride=2, rngs=rngs)
        self.norm3 = _norm(c, rngs)
        self.pre_processing = nnx.List([ResidualBlock(cfg, c, rngs=rngs) for _ in range(3)])
        self.blocks = nnx.List([_block(cfg, c, d, rngs) for d in cfg.dilations])
        # Made (drawing its keys) even without MLF, so that every later layer's init is unchanged.
        gate = _conv(cfg, 3 * c, 3, 3, bias=True, groups=cfg.mlf_groups, rngs=rngs)
        self.gate = gate if cfg.mlf else None
        self.rca = self._attention(cfg, c, rngs) if cfg.rca == "features" else None
        self.deconv3 = TransposedConv(cfg, c, c, rngs=rngs)
        self.norm4 = _norm(c, rngs)
        self.deconv2 = _conv(cfg, c, c, 3, bias=True, rngs=rngs)
        self.norm5 = _norm(c, rngs)
        self.deconv1 = _conv(cfg, c, 3, 1, bias=True, rngs=rngs)
        self.conv_su1 = _conv(cfg, 3, 3, 1, bias=True, rngs=rngs)
        self.conv_su2 = _conv(cfg, 3, 3, 1, bias=True, rngs=rngs)
        self.attention = self._attention(cfg, 3, rngs) if cfg.rca == "image" else None
        self.deconv = _conv(cfg, 3, 3, 1, bias=True, rngs=rngs)
        if cfg.init == "identity":
            self._init_identity_output()
        elif cfg.init != "pytorch":
            raise ValueError(f"model.init must be 'pytorch' or 'identity', got {cfg.init!r}")

    @staticmethod
    def _attention(cfg, c: int, rngs: nnx.Rngs) -> nnx.Module | None:
        """The attention at `cfg.rca`'s place (c = 3: on the image, else on the features)."""
        if cfg.attention == "none":
            return None
        if cfg.attention == "oa":
            return ChannelAttention(cfg, c, cfg.rca_reduction, rngs=rngs)
        return ImageAttention(cfg, rngs=rngs) if c == 3 else FeatureAttention(cfg, c, cfg.rca_reduction, rngs=rngs)

    def _init_identity_output(self) -> None:
        eye = jnp.eye(3, dtype=jnp.float32)[None, None]
        for layer in (self.conv_su2, self.deconv):
            layer.kernel[...] = eye
            layer.bias[...] = jnp.zeros((3,), jnp.float32)
        self.conv_su1.kernel[...] = self.conv_su1.kernel[...] * 1e-3
        self.conv_su1.bias[...] = jnp.zeros((3,), jnp.float32)
        if isinstance(self.attention, ImageAttention):
            self.attention.l3_w[...] = jnp.zeros((1, 1), jnp.float32)
            self.attention.l3_b[...] = jnp.full((1,), -10.0, jnp.float32)
        elif isinstance(self.attention, ChannelAttention):  # x * sigmoid(~10): open, the identity
            fc2 = self.attention.fc2
            fc2.kernel[...] = jnp.zeros_like(fc2.kernel[...])
            fc2.bias[...] = jnp.full_like(fc2.bias[...], 5.0)  # sigmoid(2 * 5) ~ 1 - 5e-5

    def __call__(
        self, x: Array, *, with_aux: bool = False, stats_slots: Array | None = None
    ) -> Array | tuple[Array, dict[str, Any]]:
        """Network output for NHWC `x` of any height and width (odd sizes are edge-padded to even
        and cropped back). With `with_aux`, also per-block solver statistics and block inputs.
        `stats_slots`: optional (3, 2) zeros; their gradient row i is block i's backward
        [iterations, residual] (see solvers.py).

        The images of a batch go through as `batch_split(config, len(x))` independent groups
        (the same values: every layer is per image); the statistics are then the worst group's,
        and iterative solvers stop per group."""
        n = 1 if global_stats.active() else batch_split(self.config, x.shape[0])
        if n == 1:
            return self._run(x, with_aux, stats_slots)
        slots = [None] * n if stats_slots is None else solvers.fan_out_max(stats_slots, n)
        parts = [self._run(xi, True, si) for xi, si in zip(jnp.split(x, n), slots, strict=True)]
        y = jnp.concatenate([p[0] for p in parts])
        return (y, _merge_aux([p[1] for p in parts])) if with_aux else y

    def _encode(self, x: Array) -> Array:
        """The full-resolution encoder and the pre-processing blocks."""
        y = self.norm1.relu(self.conv1(x))
        y = self.norm2.relu(self.conv2(y))
        y = self.norm3.relu(self.conv3(y))
        for block in self.pre_processing:
            y = block(y)
        return y

    def _decode(self, y: Array) -> Array:
        y = self.norm4.relu(self.deconv3(y))
        y = self.norm5.relu(self.deconv2(y))
        return self.deconv1(y)

    def _segment(self, method, x: Array) -> Array:
        """`method(x)`, its activations recomputed in the backward pass where `remat` says so."""
        # Not while whole-image statistics are recorded: the custom_vjp would trace them away.
        if not self.config.get("remat", False) or global_stats.active():
            return method(x)
        graphdef, params = nnx.split(self)

        def fn(params, x):
            return getattr(nnx.merge(graphdef, params), method.__name__)(x)

        return remat.recomputed(fn)(params, x)

    def _run(self, x: Array, with_aux: bool, stats_slots: Array | None):
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        inp = x.astype(_dtype(self.config))
        y = self._segment(self._encode, inp)
        block_inputs, outs, stats = [], [], []
        for i, block in enumerate(self.blocks):
            block_inputs.append(y)
            y, s = block(y, None if stats_slots is None else stats_slots[i])
            outs.append(y)
            stats.append(s)
        if self.gate is not None:
            gates = self.gate(jnp.concatenate(outs, axis=-1))
            y = sum(outs[i] * gates[..., i : i + 1] for i in range(3))
        if self.rca is not None:
            y = self.rca(y)
        y = self._segment(self._decode, y)
        y = jax.nn.leaky_relu(self.conv_su1(y) + self.conv_su2(inp), negative_slope=0.1)
        if self.attention is not None:
            y = self.attention(y)
        y = self.deconv(y).astype(jnp.float32)[:, :h, :w, :]
        if with_aux:
            return y, {"block_inputs": block_inputs, "block_outputs": outs, "solver_stats": stats}
        return y


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
