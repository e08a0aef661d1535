"""Exact inference on images of any size in bounded memory: MI-Net run stage by stage over tiles.

MI-Net is not a local operator: each of its ~60 instance norms (and the attention) reduces over
the whole image, and each statistic depends on the ones before it. So the network is executed
layer by layer. A *stage* reads tiles of one or more feature maps (plus the halo its
convolutions need) from host memory, applies the statistics of earlier stages pointwise,
computes a convolution (or a short chain), writes the tile of its output map and returns the
tile's per-channel count, mean and M2. Those are merged over tiles in float64 (Chan, Golub and
LeVeque's pairwise update) into the whole image's mean and biased variance, which the next stage
applies. An accelerator holds one tile (and its halo) at a time; the CPU two of the
half-resolution stages' (`tiles_per_call`). The maps live in numpy arrays, or in files under
`spill`, read and written a row segment at a time (pread / pwrite), so that none of their pages
count in the process's memory. Those host copies are split by rows over a few threads
(`COPY_THREADS`): XLA's threads wait while they run.

Each stage compiles once: edge tiles are zero-padded to the full tile shape. A window holds
zeros outside the image, which is a convolution's zero padding as it stands; where a pointwise
map (a norm, a ShareSepConv) makes them non-zero, a mask zeroes them again, and a mask keeps
them out of the statistics. Convolutions are the model's own modules applied to the window, so
dtype and precision are those of whole-image inference; the tile is cropped from the output as
it is copied into its map (a crop inside the compiled function was one more pass over it).

Only fixed step counts can be streamed: the IM-blocks' `unrolled` forward. A fixed_point or
anderson forward stops on a residual of the whole image; it is refused here, not approximated
per tile. Feature maps are kept only where recomputing them would cost a large convolution:
conv1 (3 -> C) is recomputed instead of storing a full-resolution C-channel map; deconv2's output
overwrites its input map in place (the tiles' borders saved first for their neighbours' halos).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
COPY_THREADS = min(4, os.cpu_count() or 1)  # measured with 2 (a 2-core CPU): see _by_rows
PARALLEL_BYTES = 1 << 20  # less is copied in the calling thread
TILES_PER_CALL: int | None = None  # None: tiles_per_call() decides by backend
_POOL: ThreadPoolExecutor | None = None


def _by_rows(fn: Callable[[int, int], None], rows: int, nbytes: int) -> None:
    """fn(a, b) over row ranges [a, b) that cover `rows`, in COPY_THREADS threads when there are
    PARALLEL_BYTES or more to move. numpy's copies and os.preadv / pwrite run without the GIL, and the
    host's copies run while XLA's threads wait: one copy thread left a core idle."""
    global _POOL
    n = min(COPY_THREADS, rows)
    if n <= 1 or nbytes < PARALLEL_BYTES:
        fn(0, rows)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="minet-copy")
    cuts = [rows * i // n for i in range(n + 1)]
    futures = [_POOL.submit(fn, a, b) for a, b in zip(cuts[1:-1], cuts[2:])]
    fn(0, cuts[1])
    for f in futures:
        f.result()


def tiles_per_call(full_resolution: bool) -> int:
    """Tiles per compiled call: on the CPU two of the half-resolution stages' tiles, as
    independent chains, because one tile's convolutions leave part of the two cores idle (an IM
    step over four 216x240 tiles: 128.5 ms in pairs against 135.9 ms one by one); one otherwise:
    with full-resolution outputs paired too, the 4K peak read 4.90 GiB in RAM and 1.84 spilled,
    against 4.42-4.61 and 1.49-1.50 as it is. An accelerator holds one tile at a time.
    TILES_PER_CALL, where set, overrides."""
    if TILES_PER_CALL is not None:
        return TILES_PER_CALL
    return 2 if jax.default_backend() == "cpu" and not full_resolution else 1


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src (row ranges in parallel)."""

    def part(a: int, b: int) -> None:
        dst[a:b] = src[a:b]

    _by_rows(part, len(src), src.nbytes)


# --- host-side feature maps and statistics ---


class FileMap:
    """An HxWxC float32 map in a file, read and written with pread / pwrite. (np.memmap's page
    faults, one per 4 KiB touched, cost 10 s of system time in a 1080p run over 512-px tiles,
    2.5M faults: 47.5 s against 32.7 s in RAM.)"""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape = path, shape
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, int(np.prod(shape)) * 4)

    def _offset(self, row: int, col: int) -> int:
        return (row * self.shape[1] + col) * self.shape[2] * 4

    def read(self, a: int, e: int, out: np.ndarray) -> None:
        """out[:] = map[a : a + len(out), e : e + out.shape[1]]; rows of `out` contiguous."""

        def part(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                n = os.preadv(self._fd, [out[i]], self._offset(a + i, e))
                if n != out[i].nbytes:
                    raise OSError(f"{self.path}: short read ({n} of {out[i].nbytes} bytes)")

        _by_rows(part, out.shape[0], out.nbytes)

    def write(self, r: int, c: int, block: np.ndarray) -> None:
        """map[r : r + len(block), c : c + block.shape[1]] = block."""

        def part(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                row = np.ascontiguousarray(block[i])
                n = os.pwrite(self._fd, row, self._offset(r + i, c))
                if n != row.nbytes:
                    raise OSError(f"{self.path}: short write ({n} of {row.nbytes} bytes; is the disk full?)")

        _by_rows(part, block.shape[0], block.nbytes)

    def to_array(self) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        self.read(0, 0, out)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path.unlink(missing_ok=True)


class Maps:
    """HxWxC float32 feature maps in RAM, or in files under `spill` (FileMap)."""

    def __init__(self, spill: str | Path | None = None):
        self._dir = None
        if spill is not None:
            Path(spill).mkdir(parents=True, exist_ok=True)
            self._dir = tempfile.TemporaryDirectory(prefix="minet-stream-", dir=spill)
        self._count = 0
        self._pool: dict[tuple, list[np.ndarray]] = {}
        self._files: list[FileMap] = []

    def new(self, h: int, w: int, c: int) -> np.ndarray | FileMap:
        if self._dir is None:
            # Freed maps are reused: a fresh one would be faulted in page by page again. A shape
            # not in the pool empties it, so that maps of a finished phase do not add to the peak.
            pool = self._pool.get((h, w, c))
            if pool:
                return pool.pop()
            self._pool.clear()
            return np.empty((h, w, c), np.float32)
        self._count += 1
        # The kernel's page cache holds what is written and writes it back at its own pace (or
        # never, for a map freed and unlinked first).
        self._files.append(FileMap(Path(self._dir.name) / f"map{self._count}.f32", (h, w, c)))
        return self._files[-1]

    def free(self, *maps: np.ndarray | FileMap) -> None:
        for m in maps:
            if isinstance(m, FileMap):
                m.close()
                self._files.remove(m)
            else:
                self._pool.setdefault(m.shape, []).append(m)

    def close(self) -> None:
        for m in self._files:
            m.close()
        self._files.clear()
        if self._dir is not None:
            self._dir.cleanup()


class Moments:
    """Per-channel count, mean and M2 merged over tiles in float64 (Chan et al. 1979)."""

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = self.m2 = None

    def add(self, n: float, mean: np.ndarray, m2: np.ndarray) -> None:
        mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        if self.mean is None:
            self.n, self.mean, self.m2 = float(n), mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and biased variance, float32 (what the norms apply)."""
        return self.mean.astype(np.float32), (self.m2 / self.n).astype(np.float32)


# --- what a stage computes on one window (traced inside the jitted tile function) ---
# Each takes the few modules it uses (`parts`, a tuple; None where a module is absent), so that
# stages of the same structure (the three pre-processing blocks, an IM-block's T steps) share one
# compiled function.


def _norm(mod, x: Array, stats) -> Array:
    """Instance norm with given whole-image statistics (as global_stats.InstanceNorm replays)."""
    mean, var = stats
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + mod.epsilon)
    y = y * mod.scale[...].astype(jnp.float32) + mod.bias[...].astype(jnp.float32)
    return y.astype(mod.dtype or x.dtype)


def _k_conv(parts, spec, windows, mask, consts):
    """conv(pre(prefix(x))): prefix is the input itself, or relu(norm(x)); pre an optional
    ShareSepConv. parts = (norm, pre, conv)."""
    norm, pre, conv = parts
    (x,) = windows  # zero outside the image: masked again only where a norm made it non-zero
    if norm is not None:
        x = jax.nn.relu(_norm(norm, x, consts["stats"])) * mask
    if pre is not None:
        x = pre(x) * mask
    return [conv(x)]


def _k_conv1_conv2(parts, spec, windows, mask, consts):
    """conv2(relu(norm1(conv1(x)))): conv1 (3 -> C) recomputed rather than stored."""
    conv1, norm1, conv2 = parts
    (x,) = windows
    y = jax.nn.relu(_norm(norm1, conv1(x), consts["stats"])) * mask
    return [conv2(y)]


def _k_im_step(parts, spec, windows, mask, consts):
    """conv1(S(g)) of one IM-block step, g = g0 + eta f from the previous step's conv2 output.
    parts = (norm2, pre_conv1, conv1); spec = (eta,)."""
    norm2, pre, conv1 = parts
    x = windows[0]
    if len(windows) == 2:
        f = jax.nn.relu(_norm(norm2, windows[1], consts["stats"])) * mask
        x = x + spec[0] * f.astype(x.dtype)
    if pre is not None:
        x = pre(x) * mask
    return [conv1(x)]


def _k_pointwise(parts, spec, windows, mask, consts):
    """Pointwise maps between convolutions: spec[0] names which."""
    kind = spec[0]
    if kind == "norm_relu":  # relu(norm(z))
        return [jax.nn.relu(_norm(parts[0], windows[0], consts["stats"]))]
    if kind == "residual":  # relu(x + norm(z)), a pre-processing block's output
        return [jax.nn.relu(windows[0] + _norm(parts[0], windows[1], consts["stats"]))]
    if kind == "im_out":  # g0 + eta f, an IM-block's output
        f = jax.nn.relu(_norm(parts[0], windows[1], consts["stats"]))
        return [windows[0] + spec[1] * f.astype(windows[0].dtype)]
    if kind == "final":  # deconv(attention(a))
        att, deconv = parts
        a = windows[0]
        if att is not None:
            v = consts["mean"] * att.l2_w[0, 0] + att.l2_b[0]
            v = v * att.l3_w[0, 0] + att.l3_b[0]
            a = a + a * jax.nn.sigmoid(v).astype(a.dtype)
        return [deconv(a).astype(jnp.float32)]
    raise ValueError(kind)


def _k_mlf(parts, spec, windows, mask, consts):
    """The MLF fusion sum_i out_i * gate_i; with the paper's RCA also its 1x1 conv, whose
    spatial mean the attention needs. parts = (gate, rca)."""
    gate, rca = parts
    outs = windows
    gates = gate(jnp.concatenate(outs, axis=-1))
    y = sum(outs[i] * gates[..., i : i + 1] for i in range(3))
    if rca is None:
        return [y]
    return [y, rca.conv(y).astype(jnp.float32)]


def _k_up(parts, spec, windows, mask, consts):
    """deconv3 of the fused features (after the paper's RCA where there is one). parts = (rca, deconv3)."""
    rca, deconv3 = parts
    y = windows[0]
    if rca is not None:
        v = rca.fc2(jax.nn.relu(rca.fc1(consts["mean"])))
        y = y + y * jax.nn.sigmoid(v).astype(y.dtype)
    return [deconv3(y)]  # y + y * s is zero where y is


def _k_decode(parts, spec, windows, mask, consts):
    """a = leaky(conv_su1(deconv1(relu(norm5(z5)))) + conv_su2(inp)), all 1x1 (no halo); also
    the authors' attention's c0(a), whose mean it needs."""
    norm5, deconv1, su1, su2, c0 = parts
    z5, inp = windows
    y = jax.nn.relu(_norm(norm5, z5, consts["stats"]))
    a = jax.nn.leaky_relu(su1(deconv1(y)) + su2(inp.astype(su2.dtype)), negative_slope=0.1)
    return [a] if c0 is None else [a, c0(a).astype(jnp.float32)]


_KINDS: dict[str, Callable] = {
    "conv": _k_conv, "conv1_conv2": _k_conv1_conv2, "im_step": _k_im_step, "pointwise": _k_pointwise,
    "mlf": _k_mlf, "up": _k_up, "decode": _k_decode,
}  # fmt: skip


@partial(jax.jit, static_argnames=("graphdef", "kind", "spec", "crop", "keep", "moments"))
def _tile(graphdef, state, windows, masks, out_masks, consts, *, kind, spec, crop, keep, moments):
    """One stage on a group of windows (one per tile, `windows[k]` the k-th tile's inputs): for
    each, the outputs over the window (those in `keep`; the caller crops them to the tile) and,
    for those in `moments`, the tile's count, per-channel mean and M2 over its in-image
    positions. The tiles are independent chains in one program (see TILES_PER_CALL)."""
    parts = nnx.merge(graphdef, state)
    res = []
    for wins, mask, out_mask in zip(windows, masks, out_masks):
        outs = [o[0] for o in _KINDS[kind](parts, spec, [w[None] for w in wins], mask[None], consts)]
        res.append(([outs[i] for i in keep], [_moments(outs[i].astype(jnp.float32), crop, out_mask) for i in moments]))
    return res


def _moments(x: Array, crop: tuple[int, int, int, int], out_mask: Array | None) -> tuple[Array, Array, Array]:
    """Count, per-channel mean and M2 of x[r0:r0+th, c0:c0+tw] (where `out_mask`, if given).

    A full tile (no mask: its crop lies wholly inside the image) takes sums over all of x less
    those over the ring of x outside the crop: XLA's CPU backend copies a cropped or masked map
    before reducing it, which made the statistics cost ~40% of a stage's convolution; the ring is
    a few pixels wide."""
    r0, c0, th, tw = crop
    if out_mask is not None:
        t = x[r0 : r0 + th, c0 : c0 + tw]
        n = jnp.sum(out_mask)
        mean = jnp.sum(t * out_mask, axis=(0, 1)) / n
        return n, mean, jnp.sum(jnp.square((t - mean) * out_mask), axis=(0, 1))
    ring = [x[:r0], x[r0 + th :], x[r0 : r0 + th, :c0], x[r0 : r0 + th, c0 + tw :]]
    ring = [p for p in ring if p.size]
    mean = (jnp.sum(x, axis=(0, 1)) - sum(jnp.sum(p, axis=(0, 1)) for p in ring)) / (th * tw)
    m2 = jnp.sum(jnp.square(x - mean), axis=(0, 1)) - sum(jnp.sum(jnp.square(p - mean), axis=(0, 1)) for p in ring)
    return jnp.float32(th * tw), mean, m2


# --- the stage runner ---


def _starts(size: int, tile: int) -> Iterator[int]:
    return iter(range(0, size, tile))


def _window(m: np.ndarray | FileMap, r0: int, c0: int, out: np.ndarray, mask: np.ndarray) -> None:
    """Fill `out` with m[r0:, c0:] (zeros outside m) and `mask` with where it lies inside m.
    Only the strips outside m are zeroed: a full fill was one more pass over every window."""
    h, w = m.shape[:2]
    rows, cols = out.shape[:2]
    a, b = max(r0, 0), min(r0 + rows, h)
    e, f = max(c0, 0), min(c0 + cols, w)
    if a >= b or e >= f:
        out.fill(0.0)
        mask.fill(0.0)
        return
    for buf in (out, mask):
        buf[: a - r0] = 0.0
        buf[b - r0 :] = 0.0
        buf[a - r0 : b - r0, : e - c0] = 0.0
        buf[a - r0 : b - r0, f - c0 :] = 0.0
    mask[a - r0 : b - r0, e - c0 : f - c0] = 1.0
    if isinstance(m, FileMap):
        m.read(a, e, out[a - r0 : b - r0, e - c0 : f - c0])
    else:
        _copy(out[a - r0 : b - r0, e - c0 : f - c0], m[a:b, e:f])


def _origin(scale: str, halo: int, r: int, c: int) -> tuple[int, int]:
    """Top-left of the input window of the output tile at (r, c), in the input's pixels."""
    if scale == "same":
        return r - halo, c - halo
    if scale == "down":
        return 2 * r - 2, 2 * c - 2
    return r // 2 - 1, c // 2 - 1


class _Borders:
    """The rows and columns of a map within `halo` of its tiles' boundaries, copied before a stage
    overwrites the map in place: a window's context from a neighbouring tile is patched from them,
    since that tile may already hold its output. ~16 MB for a 4K map of 64 channels."""

    def __init__(self, m: np.ndarray | FileMap, th: int, tw: int, halo: int):
        h, w, c = m.shape
        self.rows = [(a, self._read(m, a, 0, min(b, h) - a, w, c)) for a, b in _bands(h, th, halo)]
        self.cols = [(e, self._read(m, 0, e, h, min(f, w) - e, c)) for e, f in _bands(w, tw, halo)]

    @staticmethod
    def _read(m: np.ndarray | FileMap, a: int, e: int, rows: int, cols: int, c: int) -> np.ndarray:
        out = np.empty((rows, cols, c), np.float32)
        if isinstance(m, FileMap):
            m.read(a, e, out)
        else:
            _copy(out, m[a : a + rows, e : e + cols])
        return out

    def patch(self, out: np.ndarray, r0: int, c0: int) -> None:
        """Overwrite `out` (the window at (r0, c0)) wherever it meets a saved band. Within the tile
        itself the band equals the map, which the tile has not yet written."""
        rows, cols = out.shape[:2]
        for (a, e), band in [((a, 0), b) for a, b in self.rows] + [((0, e), b) for e, b in self.cols]:
            lo, hi = max(r0, a), min(r0 + rows, a + band.shape[0])
            left, right = max(c0, e), min(c0 + cols, e + band.shape[1])
            if lo < hi and left < right:
                out[lo - r0 : hi - r0, left - c0 : right - c0] = band[lo - a : hi - a, left - e : right - e]


def _bands(size: int, tile: int, halo: int) -> list[tuple[int, int]]:
    """[b - halo, b + halo) around each boundary b between tiles of `tile` along `size`."""
    return [(b - halo, b + halo) for b in range(tile, size, tile)]


def _split(size: int, tile: int) -> int:
    """The tile length that covers `size` with as few tiles of at most `tile` as possible, evenly
    (rounded up to even): edge tiles are padded to it, so an uneven split computes a whole tile
    for a sliver (540 rows in 256-row tiles: 768 computed; in 180-row tiles: 540)."""
    n = -(-size // tile)
    length = -(-size // n)
    return min(size, length + length % 2)


def _aligned(shape: tuple) -> np.ndarray:
    """Zeros, 64-byte aligned: JAX's CPU client then reads the array in place instead of copying
    it at every call (numpy's own alignment is 16 bytes)."""
    size = int(np.prod(shape)) * 4
    raw = np.zeros(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + size].view(np.float32).reshape(shape)


class _Runner:
    def __init__(self, tile: int, maps: Maps, full: tuple[int, int]):
        self.tile, self.maps, self.full = tile, maps, full
        self._buffers: dict[tuple, np.ndarray] = {}  # window buffers, reused: no page faults per tile
        self._used: set[tuple] = set()

    def _buffer(self, shape: tuple, slot: tuple[int, int]) -> np.ndarray:
        key = (shape, slot)
        if key not in self._buffers:
            self._buffers[key] = _aligned(shape)
        self._used.add(key)
        return self._buffers[key]

    def _release(self) -> None:
        """Drop the buffers the last stage did not use: a stage of the same shapes (an IM-block's
        steps) reuses them, the rest only held memory (1080p spilled peak 0.84 -> 0.77 GiB)."""
        self._buffers = {k: v for k, v in self._buffers.items() if k in self._used}
        self._used = set()

    def stage(
        self, kind: str, parts: tuple, inputs: list[np.ndarray], out: tuple[int, int], channels: list[int],
        *, spec: tuple = (), halo: int = 0, scale: str = "same", store: tuple[int, ...] = (0,),
        moments: tuple[int, ...] = (), consts: dict | None = None, inplace: bool = False,
    ) -> tuple[list[np.ndarray], list[Moments]]:  # fmt: skip
        """Run a stage over every tile of its (h, w) output. `scale`: "same" (inputs at the output's
        resolution, `halo` pixels of context), "down" (inputs at twice it: a stride-2 3x3
        convolution) or "up" (inputs at half of it: the 2x transposed convolution). `inplace`:
        write the (one stored) output over inputs[0], which must have its shape."""
        graphdef, state = nnx.split(parts)
        h, w = out
        t = self.tile if out == self.full else self.tile // 2
        th, tw = _split(h, t), _split(w, t)
        if scale == "same":
            wr, wc, crop = th + 2 * halo, tw + 2 * halo, (halo, halo, th, tw)
        elif scale == "down":
            wr, wc, crop = 2 * th + 2, 2 * tw + 2, (1, 1, th, tw)
        else:  # up: output tile even, input half-resolution window with one pixel of context
            wr, wc, crop = th // 2 + 2, tw // 2 + 2, (2, 2, th, tw)
        borders = None
        if inplace:
            if scale != "same" or len(store) != 1 or inputs[0].shape != (h, w, channels[store[0]]):
                raise ValueError("an in-place stage keeps the resolution and channels of its first input")
            results = [inputs[0]]
            borders = _Borders(inputs[0], th, tw, halo)
        else:
            results = [self.maps.new(h, w, channels[i]) for i in store]
        acc = [Moments() for _ in moments]
        consts = {k: jax.tree.map(jnp.asarray, v) for k, v in (consts or {}).items()}
        tiles = [(r, c, min(th, h - r), min(tw, w - c)) for r in range(0, h, th) for c in range(0, w, tw)]
        group = tiles_per_call(out == self.full)
        for g in range(0, len(tiles), group):
            batch = tiles[g : g + group]
            wins, masks, out_masks = [], [], []
            for k, (r, c, vr, vc) in enumerate(batch):
                r0, c0 = _origin(scale, halo, r, c)
                mask = self._buffer((wr, wc, 1), (k, -1))
                bufs = [self._buffer((wr, wc, m.shape[-1]), (k, i)) for i, m in enumerate(inputs)]
                for m, buf in zip(inputs, bufs):
                    _window(m, r0, c0, buf, mask)
                if borders is not None:
                    borders.patch(bufs[0], r0, c0)
                out_mask = None
                if (vr, vc) != (th, tw):  # an edge tile: its crop reaches past the image
                    out_mask = self._buffer((th, tw, 1), (k, -2))
                    out_mask.fill(0.0)
                    out_mask[:vr, :vc] = 1.0
                wins.append(bufs)
                masks.append(mask)
                out_masks.append(out_mask)
            res = _tile(
                graphdef, state, wins, masks, out_masks, consts,
                kind=kind, spec=spec, crop=crop, keep=store, moments=moments,
            )  # fmt: skip
            for (r, c, vr, vc), (outs, stats) in zip(batch, res):
                for dst, o in zip(results, outs):
                    block = np.asarray(o)[crop[0] : crop[0] + vr, crop[1] : crop[1] + vc]
                    if isinstance(dst, FileMap):
                        dst.write(r, c, block)
                    else:
                        _copy(dst[r : r + vr, c : c + vc], block)
                for a, (n, mean, m2) in zip(acc, stats):
                    a.add(float(n), np.asarray(mean), np.asarray(m2))
        self._release()
        return results, acc


def check_streamable(model) -> None:
    """Refuse what the executor cannot run exactly (see module doc)."""
    cfg = model.config
    ablated = [f"model.{k}={v!r}" for k, v, d in (("block", cfg.block, "im"), ("attention", cfg.attention, "rca"),
               ("mlf", cfg.mlf, True)) if v != d]  # fmt: skip
    if ablated:
        raise ValueError(f"exact tiling runs the released and paper networks, not the ablation {', '.join(ablated)}")
    forward = model.config.solver.forward
    if forward != "unrolled":
        raise ValueError(
            f"exact tiling needs model.solver.forward='unrolled' (a fixed step count); {forward!r} stops on "
            "a whole-image residual, which tiles cannot test. Run it whole (no tile) instead."
        )


def stream(model, x: np.ndarray, tile: int = 512, spill: str | Path | None = None) -> np.ndarray:
    """The network's output for one HxWx3 image `x` in the network's input space (what
    `model(x[None])[0]` gives), computed over tile x tile pieces (full resolution; tile / 2 on the
    half-resolution maps). `spill`: keep the feature maps in files under this folder."""
    check_streamable(model)
    if tile < 8 or tile % 2:
        raise ValueError(f"tile must be an even number of pixels >= 8, got {tile}")
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected one HxWx3 image, got shape {x.shape}")
    h0, w0 = x.shape[:2]
    if h0 % 2 or w0 % 2:  # as MINet.__call__: edge-pad to even, crop at the end
        x = np.pad(x, ((0, h0 % 2), (0, w0 % 2), (0, 0)), mode="edge")
    maps = Maps(spill)
    try:
        return _network(_Runner(tile, maps, x.shape[:2]), model, x)[:h0, :w0]
    finally:
        maps.close()


def _network(run: _Runner, model, inp: np.ndarray) -> np.ndarray:
    cfg = model.config
    c = cfg.channels
    H, W = inp.shape[:2]
    full, half = (H, W), (H // 2, W // 2)
    free = run.maps.free

    def st(m: Moments) -> dict:
        return {"stats": m.stats()}

    # Encoder: conv1 (3 -> C) only for its statistics; recomputed inside conv2's stage.
    _, (m1,) = run.stage("conv", (None, None, model.conv1), [inp], full, [c], halo=1, store=(), moments=(0,))
    (z2,), (m2,) = run.stage("conv1_conv2", (model.conv1, model.norm1, model.conv2), [inp], full, [c], halo=2,
                             moments=(0,), consts=st(m1))  # fmt: skip
    (z3,), (m3,) = run.stage("conv", (model.norm2, None, model.conv3), [z2], half, [c], scale="down",
                             moments=(0,), consts=st(m2))  # fmt: skip
    free(z2)
    del z2  # free() pools the map; the name must go too, or it is never returned
    (x,), _ = run.stage("pointwise", (model.norm3,), [z3], half, [c], spec=("norm_relu",), consts=st(m3))
    free(z3)
    del z3
    for rb in model.pre_processing:
        (r1,), (n1,) = run.stage("conv", (None, None, rb.conv1), [x], half, [c], halo=1, moments=(0,))
        (r2,), (n2,) = run.stage("conv", (rb.norm1, None, rb.conv2), [r1], half, [c], halo=1, moments=(0,),
                                 consts=st(n1))  # fmt: skip
        free(r1)
        del r1
        (x_next,), _ = run.stage("pointwise", (rb.norm2,), [x, r2], half, [c], spec=("residual",), consts=st(n2))
        free(x, r2)
        del r2
        x = x_next

    # IM-blocks: T stages of conv1 and conv2 each; g is formed pointwise from g0 and the last conv2.
    outs = []
    for b, dil in enumerate(cfg.dilations):
        f, eta = model.blocks[b].f, model.blocks[b].eta
        smooth = f.pre_conv1 is not None
        halo_a = dil + (dil - 1 if smooth else 0)
        halo_b = 1 + (dil - 1 if smooth else 0)
        g0, z, za = x, None, None
        for _ in range(model.blocks[b].T):
            ins = [g0] if z is None else [g0, z]
            (z1,), (a1,) = run.stage("im_step", (f.norm2 if z is not None else None, f.pre_conv1, f.conv1), ins,
                                     half, [c], spec=(eta,), halo=halo_a, moments=(0,),
                                     consts=st(za) if z is not None else {})  # fmt: skip
            if z is not None:
                free(z)
            (z,), (za,) = run.stage("conv", (f.norm1, f.pre_conv2, f.conv2), [z1], half, [c], halo=halo_b,
                                    moments=(0,), consts=st(a1))  # fmt: skip
            free(z1)
        (out,), _ = run.stage("pointwise", (f.norm2,), [g0, z], half, [c], spec=("im_out", eta), consts=st(za))
        free(z)
        del z, z1
        if b == 0:
            free(g0)  # later blocks' g0 is the previous block's output, kept for the fusion
        outs.append(out)
        x = out

    # Fusion, (paper) feature attention, decoder.
    if model.rca is None:
        (m,), _ = run.stage("mlf", (model.gate, None), outs, half, [c], halo=1)
        consts_up = {}
    else:
        (m,), (ma,) = run.stage("mlf", (model.gate, model.rca), outs, half, [c, c], halo=1, moments=(1,))
        consts_up = {"mean": ma.stats()[0]}
    free(*outs)
    del outs, out, x, g0
    (z4,), (m4,) = run.stage("up", (model.rca, model.deconv3), [m], full, [c], scale="up", moments=(0,),
                             consts=consts_up)  # fmt: skip
    free(m)
    del m
    # deconv2's output overwrites z4 tile by tile (the tiles' borders kept for their neighbours'
    # halos): no second full-resolution map, and deconv2 computed once.
    (z5,), (m5,) = run.stage("conv", (model.norm4, None, model.deconv2), [z4], full, [c], halo=1,
                             moments=(0,), consts=st(m4), inplace=True)  # fmt: skip
    c0 = model.attention.c0 if model.attention is not None else None
    parts = (model.norm5, model.deconv1, model.conv_su1, model.conv_su2, c0)
    if c0 is None:
        (a,), _ = run.stage("decode", parts, [z5, inp], full, [3], consts=st(m5))
        consts_final = {}
    else:
        (a,), (mc,) = run.stage("decode", parts, [z5, inp], full, [3, 3], moments=(1,), consts=st(m5))
        consts_final = {"mean": mc.stats()[0]}
    free(z4)
    del z4, z5
    (y,), _ = run.stage("pointwise", (model.attention, model.deconv), [a], full, [3], spec=("final",),
                        consts=consts_final)  # fmt: skip
    free(a)
    return y.to_array() if isinstance(y, FileMap) else np.array(y, np.float32)
