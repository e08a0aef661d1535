"""The stability CLI (`python -m minet_jax.tools.stability`) on the authors' weights and a SOTS image."""

from __future__ import annotations

import json

import pytest

from minet_jax.tools import stability


@pytest.fixture(scope="module")
def hazy_image(official_weights, sots_mini):
    return sots_mini / "hazy" / "1400_1.png"


def check_report(out, method: str, unknowns: int) -> list[dict]:
    report = json.loads((out / "stability.json").read_text())
    assert [b["name"] for b in report["blocks"]] == ["res1", "res2", "res4"]
    for b in report["blocks"]:
        assert b["method"] == method and b["unknowns"] == unknowns and b["eta"] == 1.0
        assert b["method_residual"] < 1e-3
        assert len(b["forward_residuals"]) == 8
        assert b["theorem1_holds"] == (b["spectral_radius"] < 1)
        assert b["sigma_max"] >= b["spectral_radius"] * (1 - 1e-3)
        assert len(b["top_eigenvalues"]) == 8 and len(b["top_eigenvalues"][0]) == 2
    assert (out / "eigenvalues.png").stat().st_size > 0
    assert (out / "residuals.png").stat().st_size > 0
    return report["blocks"]


def test_cli_exact_and_arnoldi_agree(official_weights, hazy_image, tmp_path):
    """--crop 8: 4x4x64 = 1024 unknowns per block, small enough for the exact eigenvalues."""
    blocks = {}
    for method in ("exact", "arnoldi"):
        out = tmp_path / method
        stability.main([
            "--checkpoint", str(official_weights), "--image", str(hazy_image), "--crop", "8", "--output", str(out),
            "--method", method, "--sigma-method", "lanczos", *(["--fixed-point"] if method == "exact" else []),
        ])  # fmt: skip
        blocks[method] = check_report(out, method, 4 * 4 * 64)
    for b in blocks["exact"]:
        fp = b["fixed_point"]
        assert fp["converged"] == ("spectral_radius" in fp)
        assert fp["converged"] or fp["status"] == "did not converge"
        k = min(len(fp["residuals"]), len(b["forward_residuals"]))  # the same iteration from g0
        assert fp["residuals"][:k] == pytest.approx(b["forward_residuals"][:k], rel=1e-4)
    for key in ("spectral_radius", "sigma_max"):
        exact = [b[key] for b in blocks["exact"]]
        assert [b[key] for b in blocks["arnoldi"]] == pytest.approx(exact, rel=1e-2)


@pytest.mark.slow
def test_cli_crop32(official_weights, hazy_image, tmp_path):
    """--crop 32 (16x16x64 = 16384 unknowns per block: --method auto takes Arnoldi)."""
    out = tmp_path / "stab"
    stability.main([
        "--checkpoint", str(official_weights), "--image", str(hazy_image), "--crop", "32", "--output", str(out),
        "--sigma-method", "lanczos", "--power-iters", "20",
    ])  # fmt: skip
    for b in check_report(out, "arnoldi", 16 * 16 * 64):
        assert b["convergence"]["converged"]
