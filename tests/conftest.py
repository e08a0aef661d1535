"""Shared fixtures: where ../shared is, and skipping cleanly where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "minet_its_official.pth"
REFERENCE = SHARED / "reference"
SOTS_MINI = SHARED / "data" / "sots-indoor-mini"


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when `path` is absent."""
    if not path.exists():
        pytest.skip(f"{path} not found (the authors' files live in ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def official_model():
    """The official network with the authors' weights (skips without ../shared)."""
    from minet_jax import load_pretrained

    return load_pretrained(require(WEIGHTS))
