"""The authors' MI-Net in PyTorch, for benchmarks only: written from
``../shared/design/official-architecture.md`` (the authors' code is not in this repository).

    pip install "torch==2.13.0+cpu"       # the CPU wheel; torch is never a requirement of minet-jax
    python benchmarks/torch_minet.py       # checks it against ../shared/reference with the authors' weights

The weights are read with `minet_jax.torch_pickle` (no pickled code runs), so this script also
needs the project installed. minet_jax never imports this file. `torch_vs_jax.py` times it
against minet-jax.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


class ShareSepConv(nn.Module):
    """One k x k kernel applied depthwise to every channel alike (identity at init)."""

    def __init__(self, k: int):
        super().__init__()
        w = torch.zeros(1, 1, k, k)
        w[0, 0, k // 2, k // 2] = 1.0
        self.weight = nn.Parameter(w)
        self.k = k

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(x, self.weight.expand(c, 1, self.k, self.k), padding=(self.k - 1) // 2, groups=c)


def _conv(cin, cout, k=3, stride=1, pad=1, dilation=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=bias)


def _norm(c):
    return nn.InstanceNorm2d(c, affine=True, eps=1e-5)


class ResidualBlock(nn.Module):
    """pre_processing.k: ReLU(x + IN(conv2(ReLU(IN(conv1(x))))))."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = _conv(64, 64), _norm(64)
        self.conv2, self.norm2 = _conv(64, 64), _norm(64)

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class Field(nn.Module):
    """f of an IM-block at dilation d (d > 1: ShareSepConv(2d - 1) before each convolution)."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        if d > 1:
            self.pre_conv1, self.pre_conv2 = ShareSepConv(2 * d - 1), ShareSepConv(2 * d - 1)
        self.conv1, self.norm1 = _conv(64, 64, pad=d, dilation=d), _norm(64)
        self.conv2, self.norm2 = _conv(64, 64), _norm(64)

    def forward(self, x):
        if self.d > 1:
            x = self.pre_conv1(x)
        y = F.relu(self.norm1(self.conv1(x)))
        if self.d > 1:
            y = self.pre_conv2(y)
        return F.relu(self.norm2(self.conv2(y)))


class MINet(nn.Module):
    """The released network: BGR 0..255 in, the same out, unclamped."""

    def __init__(self, T: int = 8):
        super().__init__()
        self.T = T
        self.conv1, self.norm1 = _conv(3, 64), _norm(64)
        self.conv2, self.norm2 = _conv(64, 64), _norm(64)
        self.conv3, self.norm3 = _conv(64, 64, stride=2), _norm(64)
        self.pre_processing = nn.Sequential(*(ResidualBlock() for _ in range(3)))
        self.res1, self.res2, self.res4 = Field(1), Field(2), Field(4)
        self.gate = _conv(192, 3, bias=True)
        self.deconv3, self.norm4 = nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), _norm(64)
        self.deconv2, self.norm5 = _conv(64, 64, bias=True), _norm(64)
        self.deconv1 = _conv(64, 3, k=1, pad=0, bias=True)
        self.conv_su1 = _conv(3, 3, k=1, pad=0, bias=True)
        self.conv_su2 = _conv(3, 3, k=1, pad=0, bias=True)
        self.layer1 = nn.Sequential(
            _conv(3, 3, k=1, pad=0, bias=True), nn.AdaptiveAvgPool2d(1), nn.Linear(1, 1), nn.Linear(1, 1), nn.Sigmoid()
        )
        self.deconv = _conv(3, 3, k=1, pad=0, bias=True)
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, a=0.1)

    def forward(self, inp):
        y = F.relu(self.norm1(self.conv1(inp)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        g = self.pre_processing(y)
        outs = []
        for f in (self.res1, self.res2, self.res4):
            g0 = g
            for _ in range(self.T):
                g = f(g) + g0
            outs.append(g)
        w = self.gate(torch.cat(outs, dim=1))
        y = outs[0] * w[:, [0]] + outs[1] * w[:, [1]] + outs[2] * w[:, [2]]
        y = F.relu(self.norm4(self.deconv3(y)))
        y = F.relu(self.norm5(self.deconv2(y)))
        y = F.leaky_relu(self.conv_su1(self.deconv1(y)) + self.conv_su2(inp), 0.1)
        y = y + y * self.layer1(y)
        return self.deconv(y)


def authors_model(path: Path = SHARED / "weights" / "minet_its_official.pth") -> MINet:
    """MINet with the authors' weights, read without running pickled code."""
    sys.path.insert(0, str(ROOT))
    from minet_jax.torch_pickle import load_torch_file  # noqa: PLC0415

    model = MINet()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_torch_file(path).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_rgb(model: MINet, rgb: np.ndarray) -> np.ndarray:
    """HWC RGB 0..255 float32 -> the network's HWC RGB output (fed as BGR, its convention)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32))
    with torch.no_grad():
        y = model(x)[0].numpy()
    return y.transpose(1, 2, 0)[..., ::-1]


def check_reference(shared: Path = SHARED) -> list[dict]:
    """Relative error and worst pixel against the authors' outputs in `shared/reference`."""
    from PIL import Image  # noqa: PLC0415

    model = authors_model(shared / "weights" / "minet_its_official.pth")
    ref = shared / "reference"
    cases = [
        ("sots_1400_1", np.asarray(Image.open(shared / "data" / "sots-indoor-mini" / "hazy" / "1400_1.png").convert("RGB"), np.float32)),
        ("sots_1401_5_crop", np.load(ref / "sots_1401_5_crop.input.npy")),
    ]  # fmt: skip
    rows = []
    for name, rgb in cases:
        out, want = run_rgb(model, rgb), np.load(ref / f"{name}.official.npy")
        rows.append({
            "case": name, "shape": list(rgb.shape),
            "relative_error": float(np.linalg.norm(out - want) / np.linalg.norm(want)),
            "max_abs_error": float(np.abs(out - want).max()),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder (weights, reference, data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    n = sum(p.numel() for p in MINet().parameters())
    print(f"parameters: {n:,} (the design doc says 628,078)")
    ok = n == 628_078
    for r in check_reference(args.shared):
        good = r["relative_error"] < 1e-5 and r["max_abs_error"] < 0.01
        ok &= good
        print(f"{r['case']} {r['shape']}: relative error {r['relative_error']:.2e}, worst pixel "
              f"{r['max_abs_error']:.2e} (reference README: < 1e-5 and < 0.01) {'ok' if good else 'MISMATCH'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
