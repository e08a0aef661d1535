"""Every configuration of minet-jax in one place: the model (and its solver), the data, training,
the preset loader and the one `KEY=VALUE` override parser.

A training config (`train_config`) holds `model` (`model_config`, with `model.solver`), `data`
(`data_config`) and the training fields. `configs/*.py` are presets: each has `get_config()`
returning such a config; `load_config` loads one by path or by name. Overrides are dotted keys
rooted at the training config (`model.T=16`, `data.crop_size=128`, `stability.weight=1`), the
same in `train.py --set` (or ml_collections' `--config.model.T=16`), `evaluate.py --set`,
`tools.bench --set` and `tools.compare_solvers --set`; `apply_overrides` parses them.

`official` is the authors' released network (see ../shared/design/official-architecture.md); their
weights fit it. `paper` is the network as the paper describes it; where the paper is ambiguous the
choices are written next to the field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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
            # Table 2's ablations. block: "im" (the IM-block), "resblock1" (one residual block
            # x + eta f(x) per IM-block) or "resblockT" (T residual blocks, unshared weights);
            # attention at `rca`'s place: "rca", "oa" (CBAM's channel attention) or "none";
            # mlf: the gated fusion of the three blocks (False: the third block's output goes on).
            block="im",
            attention="rca",
            mlf=True,
            # What the network sees: "bgr255" = BGR on 0..255 (authors' weights); "rgb01" = RGB
            # on [0, 1] (trains much faster from scratch).
            input_format="bgr255",
            # "pytorch": the authors' initialisation; "identity": output path started near the
            # identity (conv_su2 = deconv = I, conv_su1 ~ 0, attention closed) for training.
            init="pytorch",
            dtype="float32",  # compute dtype of the convolutions ("bfloat16" for mixed precision)
            precision="",  # jax.lax.Precision name for convolutions, e.g. "highest"; "" = default
            # ShareSepConv (one k x k kernel on every channel): "shift" (k^2 shifted copies with a
            # hand-written gradient, minet_jax/conv.py; ~20x faster than XLA's depthwise
            # convolution on CPU), "shift_autodiff" (the same sums, JAX's own gradient), "xla", or
            # "auto" = shift on CPU, xla elsewhere. Same values.
            share_sep_impl="auto",
            # The IM-block convolutions' gradient: "explicit" (input gradient as a forward
            # convolution with the flipped kernel, minet_jax/conv.py; reverse mode only; XLA's
            # CPU backend otherwise leaves its fast path inside the implicit backward's adjoint
            # loop), "lax" (JAX's own rule, any mode), or "auto" = explicit on CPU. Same values.
            conv_vjp="auto",
            # Run a batch as this many independent groups of images (same values; on the CPU
            # XLA then keeps both cores busy, see model.AUTO_BATCH_SPLIT_CPU); 0 = auto (2 on
            # the CPU, 1 elsewhere), lowered to a divisor of the batch.
            batch_split=0,
            # Recompute the encoder (with the pre-processing blocks) and the decoder in the backward
            # pass instead of keeping their activations (minet_jax/remat.py): less training
            # memory for more compute. Reverse mode only; the probes compute plainly.
            remat=False,
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


# Model settings that older checkpoints may hold and this version no longer has (dropped on load).
OBSOLETE_MODEL_KEYS = ("conv_impl",)


def data_config() -> ml_collections.ConfigDict:
    """The `config.data` fields, with defaults (read by `minet_jax.input_pipeline`)."""
    c = ml_collections.ConfigDict()
    # synthetic | reside_its | reside_ots | sots_indoor | sots_outdoor | paired
    c.name = "synthetic"
    # The images' folder. For "synthetic": where the embedded set is written ("" = <cache>/synthetic).
    c.manual_dir = ""
    c.data_dir = ""  # TFDS data dir ("" = <cache>/tfds; <cache> = $XDG_CACHE_HOME/minet_jax or ~/.cache/minet_jax)
    c.sots_dir = ""  # SOTS indoor folder: ITS scenes it shares are left out of reside_its
    c.crop_size = 64  # random square crops; 0 = whole images (a batch's images must then share a size)
    c.flip = True  # random horizontal flips
    c.permute_channels = False  # random R, G, B order per example (the same for hazy and clear)
    # Training haze synthesised afresh for every example from its clear image (synthetic.add_haze:
    # new airlight, scattering and depth each time) instead of the data set's hazy images.
    c.fresh_haze = False
    c.workers = 0  # 0 = decode in this process (2 threads); > 0 = grain worker processes
    c.val_name = ""  # "" = the training data set
    c.val_manual_dir = ""  # "" = manual_dir for the same data set, else sots_dir for sots_* sets
    c.val_split = ""  # "" = "validation", else "test"
    c.val_limit = 0  # at most this many validation images, evenly spread (0 = all)
    return c


def train_config(variant: str = "official") -> ml_collections.ConfigDict:
    """Training defaults; `configs/*.py` start from here (see configs/default.py for what they train)."""
    c = ml_collections.ConfigDict()
    c.model = model_config(variant)
    c.data = data_config()
    c.seed = 0
    # Start from these parameters instead of a random init: the authors' .pth or a minet-jax
    # checkpoint (directory or step); its architecture must match config.model (checked).
    c.init_from = ""
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
    c.max_loss_ratio = 100.0  # divergence: stop when a loss exceeds this multiple of the recent median (0 = off)
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
    # spectral radius of eta J_f (0 = never; `iters` Arnoldi steps); `weight` > 0 adds a Jacobian
    # regulariser to the loss (`kind`: "frobenius", a Hutchinson estimate with `samples` random
    # vectors, or "radius", penalised above `margin` after `power_iters` power steps), computed on
    # the first `batch` examples of each batch (0 = all: the term's cost is per example).
    c.stability = ml_collections.ConfigDict(
        dict(every=50, iters=20, weight=0.0, kind="frobenius", margin=0.9, samples=1, power_iters=8, batch=0)
    )
    return c


# --- presets ---


def _config_dir() -> Path:
    # An installed copy holds the presets as minet_jax/configs; a checkout has them in configs/.
    here = Path(__file__).resolve().parent
    return here / "configs" if (here / "configs").is_dir() else here.parent / "configs"


CONFIG_DIR = _config_dir()


class ConfigError(ValueError):
    """A config file, preset name or override that cannot be used (the message says why)."""


def load_config(spec: str | Path) -> ml_collections.ConfigDict:
    """The config of a preset: a path to a `configs/*.py`-style file, or a preset's name
    (`"default"`, `"test"`, `"official_its"`, `"paper_its"`) in the repository's configs/ folder."""
    path = Path(spec)
    if path.suffix != ".py" and not path.exists():
        path = CONFIG_DIR / f"{spec}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py"))) if CONFIG_DIR.is_dir() else "none"
        raise ConfigError(f"config {spec}: no such file, and not a preset in {CONFIG_DIR} (presets: {known})")
    module_spec = importlib.util.spec_from_file_location(f"minet_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {path}: defines no get_config()")
    return module.get_config()


# --- overrides ---


def parse_value(raw: str) -> Any:
    """An override's value: JSON, else a Python literal (`True`, `(1, 2, 5)`), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    """`["model.T=16", "lr=1e-3"]` -> `[("model.T", 16), ("lr", 0.001)]`."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. model.T=16")
        out.append((key.strip(), parse_value(raw)))
    return out


def _coerce(key: str, old: Any, value: Any) -> Any:
    """`value` in the type of the field it replaces (any value as text for a string field, lists
    as tuples, ints for float fields); a one-line ConfigError where it does not fit."""
    if isinstance(old, str):
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    if isinstance(old, bool) or isinstance(value, bool):
        if isinstance(old, bool) and isinstance(value, bool):
            return value
    elif isinstance(old, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    elif isinstance(old, float) and isinstance(value, (int, float)):
        return float(value)
    elif old is None or type(old) is type(value):
        return value
    raise ConfigError(f"config field {key} takes {type(old).__name__} values (now {old!r}), got {value!r}")


def apply_overrides(
    cfg: ml_collections.ConfigDict, items: Iterable[str] | Iterable[tuple[str, Any]]
) -> ml_collections.ConfigDict:
    """A copy of `cfg` with dotted `KEY=VALUE` overrides (or parsed `(key, value)` pairs) applied,
    at any depth. Unknown keys and values of the wrong type raise a one-line `ConfigError`."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    pairs = [parse_overrides([i])[0] if isinstance(i, str) else i for i in items]
    for key, value in pairs:
        names = key.split(".")
        node = cfg
        for depth, k in enumerate(names):
            where = ".".join(names[:depth])
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"unknown config field {key!r}: {where} is a value, not a group of fields")
            if k not in node:
                close = difflib.get_close_matches(k, sorted(node), n=1)
                hint = f"; did you mean {'.'.join([*names[:depth], close[0]])}?" if close else ""
                raise ConfigError(f"unknown config field {key!r}: {where or 'the config'} has no {k!r}{hint}")
            if depth < len(names) - 1:
                node = node[k]
        old = node[names[-1]]
        if isinstance(old, ml_collections.ConfigDict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config field {key} is a group; set one of its fields, e.g. {key}.{next(iter(old))}=..."
                )
            node[names[-1]] = apply_overrides(old, _flat(value))
        else:
            node[names[-1]] = _coerce(key, old, value)
    return cfg


def nest(pairs: Iterable[tuple[str, Any]]) -> dict:
    """Dotted `(key, value)` pairs as a nested dict: `[("solver.tol", 1e-3)]` -> `{"solver": {"tol": 1e-3}}`."""
    out: dict = {}
    for key, value in pairs:
        *parents, last = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return out


def _flat(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else [(f"{prefix}{k}", v)]
    return out


def with_overrides(cfg: Mapping | ml_collections.ConfigDict, overrides: Mapping) -> ml_collections.ConfigDict:
    """A copy of `cfg` with nested-dict `overrides` applied (`{"solver": {"tol": 1e-3}}` sets
    `solver.tol`); the keyword form of `apply_overrides`, as `load_pretrained(**overrides)` takes it."""
    if not isinstance(cfg, ml_collections.ConfigDict):
        cfg = ml_collections.ConfigDict(_tuples(dict(cfg)))
    return apply_overrides(cfg, _flat(overrides))


def model_config_from(saved: Mapping) -> ml_collections.ConfigDict:
    """A full model config from a saved (possibly partial, JSON-decoded) one: defaults from its
    variant, obsolete keys dropped."""
    saved = {k: v for k, v in saved.items() if k not in OBSOLETE_MODEL_KEYS}
    return with_overrides(model_config(saved.get("variant", "official")), saved)


def _tuples(d: dict) -> dict:
    # JSON turns tuples into lists; ConfigDict refuses list -> tuple type changes.
    return {k: (_tuples(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def describe(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf field of `cfg` as (dotted key, value), in definition order."""
    out = []
    for k, v in cfg.items():
        out += describe(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [(f"{prefix}{k}", v)]
    return out


# --- what each field means, what it may take, and the check made before anything is built ---

HELP = {
    "model.variant": "official (the authors' released network, their weights fit it) | paper (as the paper describes it)",
    "model.channels": "feature channels of the encoder and IM-blocks",
    "model.T": "steps of each IM-block's iteration g <- g0 + eta f(g) (shared weights)",
    "model.dilations": "dilation of each of the three IM-blocks",
    "model.smooth_dilated": "ShareSepConv(2d-1) smoothing before each dilated conv of blocks with d > 1 (authors' code)",
    "model.eta": "step size eta of the implicit-Euler iteration (Theorem 1: stable if rho(eta J_f) < 1)",
    "model.mlf_groups": "MLF gate conv 3C -> 3: 1 = plain conv (authors' code), 3 = group conv (paper)",
    "model.rca": "channel attention: image (on the 3-channel output, authors' code) | features (fused features, paper)",
    "model.rca_reduction": "the features-RCA's (and OA's) MLP reduction C -> C/r -> C",
    "model.block": "im (IM-block: T shared-weight steps) | resblock1 (one residual block x + eta f(x)) | "
    "resblockT (T residual blocks, own weights each): Table 2; model.solver applies to im only",
    "model.attention": "at model.rca's place: rca (the paper's) | oa (CBAM channel attention, Table 2) | none",
    "model.mlf": "multi-level fusion of the three blocks' outputs (false: the third block's output alone goes on)",
    "model.input_format": "what the network sees: bgr255 (BGR 0..255, the authors' weights) | rgb01 (RGB [0, 1])",
    "model.init": "pytorch (the authors' initialisation) | identity (output path started near identity: trains fast)",
    "model.dtype": "compute dtype of the convolutions: float32 | bfloat16 (parameters and statistics stay float32; "
    "on the CPU XLA computes bf16 convolutions in float32)",
    "model.precision": "jax.lax.Precision of the convolutions, e.g. highest; empty = backend default",
    "model.share_sep_impl": "ShareSepConv as shift (shifted sums, fast on CPU) | shift_autodiff | xla | auto",
    "model.conv_vjp": "IM-block convolutions' gradient: explicit (fast in the adjoint loop on CPU) | lax | auto",
    "model.remat": "recompute the encoder (with the pre-processing blocks) and the decoder in the backward pass: "
    "less training memory (implicit step, 128 px, batch 4: XLA's buffers 428 -> 259 MiB) for ~15% more step time "
    "on CPU; reverse mode only",
    "model.batch_split": "run a batch as this many independent groups of images (same values; both CPU cores busy); "
    "0 = auto (2 on the CPU, 1 elsewhere)",
    "model.solver.forward": "IM-block forward: unrolled (exactly T steps, as released) | fixed_point | anderson (to tol)",
    "model.solver.backward": "gradient: unrolled (backprop through the steps) | implicit (adjoint solve) | phantom",
    "model.solver.unroll": "lax.scan unroll factor; 0 = auto (fully unrolled on CPU, where a rolled scan is ~50x slower)",
    "model.solver.tol": "relative residual ||g_next - g|| / ||g|| at which fixed_point / anderson stop",
    "model.solver.max_iter": "most forward iterations of fixed_point / anderson",
    "model.solver.anderson_m": "Anderson memory (past iterates mixed)",
    "model.solver.anderson_beta": "Anderson damping (1 = undamped)",
    "model.solver.anderson_lam": "Tikhonov regularisation of Anderson's mixing least squares",
    "model.solver.backward_solver": "implicit backward's adjoint solver: fixed_point | anderson | gmres",
    "model.solver.backward_tol": "relative residual at which the adjoint solve stops",
    "model.solver.backward_max_iter": "most adjoint iterations",
    "model.solver.phantom_steps": "k steps of the phantom gradient (1 = Jacobian-free backprop)",
    "data.name": "training data: synthetic (embedded) | reside_its | reside_ots | sots_indoor | sots_outdoor | paired",
    "data.manual_dir": "the images' folder (synthetic: where the embedded set is written; empty = <cache>/synthetic)",
    "data.data_dir": "TFDS data dir; empty = <cache>/tfds, <cache> = $XDG_CACHE_HOME/minet_jax or ~/.cache/minet_jax",
    "data.sots_dir": "SOTS indoor folder: ITS scenes it shares are left out of reside_its",
    "data.crop_size": "side of the random square training crops; 0 = whole images (one size per batch)",
    "data.flip": "random horizontal flips",
    "data.permute_channels": "random R, G, B order per training example, the same for hazy and clear",
    "data.fresh_haze": "synthesise each training example's haze afresh from its clear image (new A, beta, depth)",
    "data.workers": "0 = decode in this process (2 threads); > 0 = grain worker processes",
    "data.val_name": "validation data set; empty = the training one",
    "data.val_manual_dir": "validation folder; empty = manual_dir (same data set) or sots_dir (sots_*)",
    "data.val_split": "validation split; empty = validation, else test",
    "data.val_limit": "at most this many validation images, evenly spread (0 = all)",
    "seed": "seed of initialisation, data order and augmentation (a run is a pure function of it)",
    "init_from": "start from these weights (authors' .pth or a checkpoint; same architecture, checked); empty = random",
    "num_steps": "training steps in all; a rerun with more trains on from the last checkpoint",
    "batch_size": "global batch, sharded over all devices (a multiple of their count)",
    "loss": "mse | l1 | frobenius (the authors': ||out - gt||_2 over the batch on 0..255)",
    "lr": "Adam's learning rate (> 0)",
    "lr_decay_every": "steps between step decays of lr (0 = constant)",
    "lr_decay_factor": "factor of each step decay",
    "lr_decay_count": "how many decays at most (0 = no limit)",
    "adam_b1": "Adam's beta1",
    "adam_b2": "Adam's beta2",
    "grad_clip": "global-norm gradient clipping (0 = off)",
    "max_loss_ratio": "stop when a step's loss exceeds this multiple of the median of the last 100 steps' (0 = off)",
    "log_every": "steps between scalar logs (metrics.jsonl, TensorBoard)",
    "eval_every": "steps between validations (each saves a checkpoint)",
    "checkpoint_every": "steps between checkpoints (and at the end, and on SIGINT / SIGTERM)",
    "keep_checkpoints": "checkpoints kept: the last K, and the best by validation PSNR besides",
    "image_every": "steps between hazy | dehazed | clear grids of validation images (images/)",
    "grid_images": "rows of that grid (distinct clear images first)",
    "progress": "tqdm progress bar",
    "distributed": "multi-host: jax.distributed.initialize() from the environment (SLURM, TPU pods)",
    "stability.every": "steps between Arnoldi estimates of each block's rho(eta J_f) (0 = never)",
    "stability.iters": "Arnoldi steps of that estimate",
    "stability.weight": "weight of a Jacobian regulariser added to the loss (0 = none)",
    "stability.kind": "frobenius (Hutchinson ||eta J_f||_F^2) | radius (estimated rho above margin)",
    "stability.margin": "the radius regulariser's threshold",
    "stability.samples": "random vectors of the Hutchinson estimate",
    "stability.power_iters": "power steps of the radius regulariser's estimate (not differentiated)",
    "stability.batch": "examples of each batch the regulariser sees, the first ones (0 = all)",
}

CHOICES = {
    "model.variant": VARIANTS,
    "model.rca": ("image", "features"),
    "model.block": ("im", "resblock1", "resblockT"),
    "model.attention": ("rca", "oa", "none"),
    "model.input_format": ("bgr255", "rgb01"),
    "model.init": ("pytorch", "identity"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.share_sep_impl": ("auto", "shift", "shift_autodiff", "xla"),
    "model.conv_vjp": ("auto", "explicit", "lax"),
    "model.solver.forward": ("unrolled", "fixed_point", "anderson"),
    "model.solver.backward": ("unrolled", "implicit", "phantom"),
    "model.solver.backward_solver": ("fixed_point", "anderson", "gmres"),
    "data.name": ("synthetic", "reside_its", "reside_ots", "sots_indoor", "sots_outdoor", "paired"),
    "data.val_name": ("", "synthetic", "reside_its", "reside_ots", "sots_indoor", "sots_outdoor", "paired"),
    "data.val_split": ("", "validation", "test", "train"),
    "loss": ("mse", "l1", "frobenius"),
    "stability.kind": ("frobenius", "radius"),
}
# (lowest allowed, whether it may equal it); "lr > 0", "batch_size >= 1", ...
BOUNDS = {
    "model.channels": (1, True), "model.T": (1, True), "model.eta": (0, False), "model.rca_reduction": (1, True),
    "model.mlf_groups": (1, True), "model.batch_split": (0, True), "model.solver.unroll": (0, True), "model.solver.tol": (0, False),
    "model.solver.max_iter": (1, True), "model.solver.anderson_m": (1, True),
    "model.solver.backward_tol": (0, False), "model.solver.backward_max_iter": (1, True),
    "model.solver.phantom_steps": (1, True), "data.crop_size": (0, True), "data.workers": (0, True),
    "data.val_limit": (0, True), "num_steps": (1, True), "batch_size": (1, True), "lr": (0, False),
    "lr_decay_every": (0, True), "lr_decay_factor": (0, False), "lr_decay_count": (0, True),
    "adam_b1": (0, True), "adam_b2": (0, True), "grad_clip": (0, True), "max_loss_ratio": (0, True),
    "log_every": (1, True), "eval_every": (1, True), "checkpoint_every": (1, True),
    "keep_checkpoints": (1, True), "image_every": (1, True), "grid_images": (0, True),
    "stability.every": (0, True), "stability.iters": (1, True), "stability.weight": (0, True),
    "stability.samples": (1, True), "stability.power_iters": (1, True), "stability.batch": (0, True),
}  # fmt: skip


def check(cfg: ml_collections.ConfigDict, devices: int = 1) -> None:
    """Refuse, in one line naming the field, a training config that cannot run: a value outside
    its choices or bounds, or a batch that does not divide over `devices`."""
    values = dict(describe(cfg))
    for key, allowed in CHOICES.items():
        if key in values and values[key] not in allowed:
            close = difflib.get_close_matches(str(values[key]), [a for a in allowed if a], n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"config field {key} must be one of {', '.join(map(repr, allowed))}, got {values[key]!r}{hint}"
            )
    for key, (low, inclusive) in BOUNDS.items():
        if key in values and not (values[key] >= low if inclusive else values[key] > low):
            raise ConfigError(f"config field {key} must be {'>=' if inclusive else '>'} {low}, got {values[key]!r}")
    if "model.dilations" in values and len(values["model.dilations"]) != 3:
        raise ConfigError(f"config field model.dilations must name 3 dilations, got {values['model.dilations']!r}")
    if values.get("model.block", "im") != "im" and values.get("stability.weight", 0):
        raise ConfigError(
            f"config field stability.weight must be 0 with model.block={values['model.block']!r}: the Jacobian "
            "regulariser is Theorem 1's, about the IM-block's iteration"
        )
    if "adam_b1" in values and not (values["adam_b1"] < 1 and values["adam_b2"] < 1):
        raise ConfigError(
            f"config fields adam_b1 and adam_b2 must be < 1, got {values['adam_b1']}, {values['adam_b2']}"
        )
    if "batch_size" in values and values["batch_size"] % devices:
        raise ConfigError(
            f"config field batch_size {values['batch_size']} must be a multiple of the {devices} devices it is sharded over"
        )


def help_lines(cfg: ml_collections.ConfigDict) -> list[str]:
    """`key = default   meaning` for every field of `cfg`, for `train.py --help`."""
    items = describe(cfg)
    width = max(len(f"{k} = {v!r}") for k, v in items)
    return [f"  {f'{k} = {v!r}':<{width}}  {HELP.get(k, '')}".rstrip() for k, v in items]
