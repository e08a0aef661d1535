"""How much of a recipe change to `python train.py` is the change, and how much the seed?

    python benchmarks/default_recipe_seeds.py --output out/default_recipe_seeds \
        --recipe base= --recipe b2_099=adam_b2=0.99 --seeds 0,1,2

Trains configs/default.py once per recipe and seed (each in OUTPUT/runs/RECIPE_sSEED, one
train.py process at a time, so the wall times compare; a finished run is reused, so the study
resumes), then writes OUTPUT/default_recipe_seeds.json and .md: per run the final validation PSNR,
its gain over the hazy input and the run's wall time; per recipe the mean and spread over seeds,
and its mean paired difference to the first recipe. A recipe is `NAME=KEY=VALUE,KEY=VALUE` (or
`NAME=` for the default itself), in train.py's override syntax.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--recipe {text!r}: expected NAME=KEY=VALUE,... (or NAME=)")
    return name, [o for o in rest.split(",") if o]


def run(workdir: Path, overrides: list[str], seed: int) -> dict:
    """The run's summary, training it first unless `workdir` holds a finished run."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir), "--set", "progress=False",
           "--set", f"seed={seed}"]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, cwd=ROOT)  # a finished run returns at once, untouched
    summary = json.loads((workdir / "summary.json").read_text())
    curve = [
        round(r["val_psnr"], 3)
        for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
        if "val_psnr" in r
    ]
    return {
        "seed": seed,
        "val_psnr": summary["val_psnr"],
        "gain_db": summary["val_psnr"] - summary["input_psnr"],
        "input_psnr": summary["input_psnr"],
        "wall_time_s": summary["wall_time_s"],
        "val_curve": curve,
    }


def table(result: dict) -> str:
    lines = [
        f"`python train.py` (configs/default.py) per recipe and seed, on {result['machine']['cpu']} "
        f"({result['machine']['cpu_count']} cores, JAX {result['machine']['jax']}), one run at a time.",
        "",
        "| recipe | overrides | seed | val PSNR dB | gain dB | wall s | validation curve |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["recipes"]:
        for x in r["runs"]:
            lines.append(
                f"| {r['name']} | {' '.join(r['overrides']) or '-'} | {x['seed']} | {x['val_psnr']:.3f} | "
                f"{x['gain_db']:+.2f} | {x['wall_time_s']:.1f} | {', '.join(map(str, x['val_curve']))} |"
            )
    lines += ["", "| recipe | mean PSNR dB | mean gain dB | spread (max - min) dB | paired diff to first dB |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in result["recipes"]:
        lines.append(
            f"| {r['name']} | {r['mean_psnr']:.3f} | {r['mean_gain_db']:+.2f} | {r['spread_db']:.2f} | "
            f"{r['paired_diff_db']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--recipe", action="append", type=parse_recipe, required=True, metavar="NAME=K=V,...")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    from minet_jax.tools.measure import machine  # noqa: PLC0415 (imports JAX)

    recipes = []
    for name, overrides in args.recipe:
        runs = [run(args.output / "runs" / f"{name}_s{s}", overrides, s) for s in seeds]
        recipes.append({"name": name, "overrides": overrides, "runs": runs})
    first = {x["seed"]: x["val_psnr"] for x in recipes[0]["runs"]}
    for r in recipes:
        psnrs = [x["val_psnr"] for x in r["runs"]]
        r["mean_psnr"] = statistics.fmean(psnrs)
        r["mean_gain_db"] = statistics.fmean(x["gain_db"] for x in r["runs"])
        r["spread_db"] = max(psnrs) - min(psnrs)
        r["paired_diff_db"] = statistics.fmean(x["val_psnr"] - first[x["seed"]] for x in r["runs"])
    result = {"machine": machine(), "seeds": seeds, "recipes": recipes}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "default_recipe_seeds.json").write_text(json.dumps(result, indent=1))
    md = table(result)
    (args.output / "default_recipe_seeds.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
