"""Convert the authors' PyTorch weights to an orbax checkpoint directory.

    python -m minet_jax.tools.convert WEIGHTS.pth OUT_DIR

The `.pth` is read by `torch_pickle` (no PyTorch, no pickled code run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="the authors' .pth file (legacy or zip format)")
    parser.add_argument("out_dir", help="orbax checkpoint directory to write (must not exist)")
    args = parser.parse_args(argv)
    if not Path(args.weights).is_file():
        parser.error(f"weights file not found: {args.weights}")
    if Path(args.out_dir).exists():
        parser.error(f"output directory exists, refusing to overwrite: {args.out_dir}")
    from minet_jax.checkpoint import load_torch_weights, save_model  # noqa: PLC0415 (keeps --help fast)

    out = save_model(load_torch_weights(args.weights), args.out_dir)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
