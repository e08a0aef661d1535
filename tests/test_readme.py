"""Every command README.md shows, run as written (the cheap ones, with tiny overrides appended) or
through its argument parser (the long ones), in README order in one scratch folder, so that the
outputs of one (runs/default, ckpt/official) are the inputs of the next as they are for a user."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WEIGHTS = ROOT.parent / "shared" / "weights" / "minet_its_official.pth"

TINY_TRAIN = [
    "--set", "model.channels=8", "--set", "model.T=1", "--set", "num_steps=2", "--set", "batch_size=2",
    "--set", "data.crop_size=16", "--set", "data.val_limit=1", "--set", "eval_every=2", "--set", "checkpoint_every=2",
    "--set", "image_every=2", "--set", "stability.every=0", "--set", "progress=False",
]  # fmt: skip
TINY_DEFAULT_DATA = ["--set", "data.manual_dir={synthetic}", "--set", "data.data_dir={tfds}"]
RUN, PARSE, META = "run", "parse", "meta"

# README command -> (how it is exercised, arguments appended). A command README adds or drops
# must be added here or dropped: test_every_readme_command_is_covered fails until it is.
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "pip install -r requirements.txt": (META, []),  # what CI's .ci/run does
    "python train.py": (RUN, TINY_TRAIN + TINY_DEFAULT_DATA),
    "python -m pytest -q -n 2 --dist loadfile": (META, []),  # this suite, as .ci/run runs it
    "python -m pytest -q": (META, []),  # the same in one process
    "python -m minet_jax.tools.dehaze --checkpoint minet_its_official.pth photo.jpg": (RUN, []),
    "python -m minet_jax.tools.dehaze --checkpoint runs/default/checkpoints photo.jpg --suffix _mine": (RUN, []),
    "python -m minet_jax.tools.dehaze --checkpoint minet_its_official.pth photo.jpg --tile 512 --suffix _tiled": (
        RUN,
        [],
    ),
    "python -m minet_jax.tools.convert minet_its_official.pth ckpt/official": (RUN, []),
    "python evaluate.py --checkpoint ckpt/official --data SOTS/indoor --output out/sots_indoor": (
        RUN,
        ["--limit", "1"],
    ),
    "python train.py --config configs/official_its.py --workdir runs/its "
    "--config.data.manual_dir=/data/RESIDE/ITS --config.data.sots_dir=/data/RESIDE/SOTS/indoor": (RUN, TINY_TRAIN),
    "python train.py --config configs/paper_its.py --workdir runs/paper "
    "--config.data.manual_dir=/data/RESIDE/ITS --config.data.sots_dir=/data/RESIDE/SOTS/indoor": (RUN, TINY_TRAIN),
    "python train.py --workdir runs/implicit --set num_steps=500 --set model.solver.backward=implicit": (
        RUN,
        TINY_TRAIN + TINY_DEFAULT_DATA,
    ),  # fmt: skip
    "python train.py --help": (RUN, []),
    # six 2-minute trainings (2 recipes x 3 seeds); tests/benchmarks/test_default_recipe_seeds.py checks its arithmetic
    "python benchmarks/default_recipe_seeds.py --output out/default_recipe_seeds --recipe base= "
    "--recipe b2_095=adam_b2=0.95": (PARSE, []),
    # the authors' 64-channel weights do not fit TINY_TRAIN's 8 channels (tests/test_train.py runs init_from)
    "python train.py --workdir runs/finetune --set init_from=minet_its_official.pth --set model.input_format=bgr255": (
        PARSE,
        [],
    ),
    "python -m minet_jax.tools.compare_solvers --quick": (PARSE, []),
    # tests/tools/test_solver_study.py trains this config's solver end to end
    "python train.py --config configs/deq.py --workdir runs/deq": (PARSE, []),
    "python -m minet_jax.tools.solver_study --preset cpu --output runs/solver_study": (PARSE, []),  # hours; tests/tools
    # hours; tests/tools/test_ablation.py runs its tiny preset end to end
    "python -m minet_jax.tools.ablation --preset cpu --output runs/ablation": (PARSE, []),
    "python benchmarks/adjoint_tolerance.py --output out/adjoint_tolerance": (PARSE, []),
    "python benchmarks/warm_start.py --data ../shared/data/sots-indoor-train --output out/warm_start": (PARSE, []),
    "python -m minet_jax.tools.stability --checkpoint minet_its_official.pth --image hazy.png --crop 32 "
    "--output out/st32": (RUN, ["--krylov", "6", "--max-restarts", "1", "--power-iters", "2"]),
    "python -m minet_jax.tools.stability --checkpoint minet_its_official.pth --image hazy.png --output out/st_full "
    "--fixed-point": (PARSE, []),
    "python benchmarks/stability_training.py --eta 4 --output out/stability_training": (PARSE, []),
    "python -m minet_jax.tools.bench --output out/bench": (
        RUN,
        ["--sections", "inference", "--sizes", "16x16", "--batches", "1", "--dtypes", "float32", "--repeats", "1"],
    ),  # fmt: skip
    "python -m minet_jax.tools.bench --sections inference --sizes 1080x1920 --batches 8 --microbatch 1 "
    "--dtypes bfloat16": (PARSE, []),
    "python -m pytest -q -m slow": (META, []),
    "pip install torch==2.13.0+cpu": (META, []),  # benchmark-only; tests/benchmarks run where it is installed
    "python benchmarks/torch_vs_jax.py --output out/torch_vs_jax": (PARSE, []),  # needs torch
    "python benchmarks/large_image.py --weights minet_its_official.pth --image hazy.png --sizes 2160x3840 "
    "--modes whole,exact:512,exact:512:spill --output out/large_image": (PARSE, []),  # 4K: half an hour
    "python benchmarks/profile_step.py --output out/profile_step": (RUN, ["--crop", "16", "--batch", "1", "--T", "1"]),
    # compiles the whole training step once per variant (minutes); tests/benchmarks/test_batch_split.py
    "python benchmarks/batch_split.py --shapes 4x128 --pairs unrolled/unrolled --variants 1,2 --reps 3 "
    "--output out/batch_split": (PARSE, []),
    "python benchmarks/batched_wgrad.py --output out/batched_wgrad": (PARSE, []),
    "python benchmarks/ab_steps.py --variant model.remat=false --variant model.remat=true "
    "--set model.solver.backward=implicit --output out/ab_remat": (PARSE, []),
    "python benchmarks/conv_threads.py --output out/conv_threads": (RUN, ["--reps", "1"]),
    'pip install -U "jax[cuda12]==0.10.2"': (META, []),  # a GPU install; this suite runs on the CPU
    "pip install .": (META, []),  # test_config builds and installs the wheel and loads a preset from it
    "pip install -e .": (META, []),
}


def readme_commands(text: str) -> list[str]:
    """Shell commands of README's bash blocks (continuations joined, comments dropped, `&&` split)
    and its inline `python ...` commands, in order; spans holding `...` are prose, not commands."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for w in [*words, "&&"]:
                if w == "&&":
                    if command:
                        found.append(" ".join(command))
                    command = []
                else:
                    command.append(w)
    text_outside = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [c for c in re.findall(r"`((?:python|pip) [^`]+)`", text_outside) if "..." not in c]
    unique = []
    for c in found:
        if c not in unique:
            unique.append(c)
    return unique


def test_every_readme_command_is_covered():
    commands = readme_commands(README.read_text())
    assert [c for c in commands if c not in COMMANDS] == [], "README commands this test does not exercise"
    assert [c for c in COMMANDS if c not in commands] == [], "commands this test exercises that README no longer has"


# ----------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_data, natural_rgb):
    """The folder commands run in, with the files README's commands name: photo.jpg, hazy.png,
    SOTS/indoor, the authors' weights (linked, where ../shared has them), and tiny RESIDE folders
    standing in for /data/RESIDE/ITS and /data/RESIDE/SOTS/indoor."""
    from PIL import Image

    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "configs").symlink_to(ROOT / "configs")  # README's paths are relative to the checkout
    Image.fromarray(natural_rgb("astronaut", (48, 64))).save(cwd / "photo.jpg", quality=95)
    Image.fromarray(natural_rgb("coffee", (40, 48))).save(cwd / "hazy.png")
    if WEIGHTS.is_file():
        (cwd / "minet_its_official.pth").symlink_to(WEIGHTS)
    reside = tmp_path_factory.mktemp("reside")
    its, sots = reside / "ITS", reside / "SOTS" / "indoor"
    for i, name in enumerate(("astronaut", "rocket", "coffee", "chelsea", "retina")):
        clear = natural_rgb(name, (32, 32), offset=8)
        hazy = (0.6 * clear + 0.4 * 230).astype("uint8")
        if i < 3:  # ITS scenes; SOTS gets other photos (training on ITS leaves out scenes SOTS shares)
            files = [(its / "hazy" / f"{i + 1}_1_0.8.png", hazy), (its / "clear" / f"{i + 1}.png", clear)]
        else:
            files = [(root / sub / f"{100 + i}{k}.png", img) for root in (sots, cwd / "SOTS" / "indoor")
                     for sub, k, img in (("hazy", "_1", hazy), ("gt", "", clear))]  # fmt: skip
        for path, img in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return cwd, reside, tiny_data


class _Parsed(Exception):
    pass


def _program(words: list[str]):
    """(the command's main function, its argv)."""
    if words[:2] == ["python", "-m"]:
        return importlib.import_module(words[2]).main, words[3:]
    script = ROOT / words[1]
    if script.parent == ROOT:
        sys.path.insert(0, str(ROOT))
        return importlib.import_module(script.stem).main, words[2:]
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main, words[2:]


@pytest.mark.usefixtures("no_tensorflow_no_home_cache")
@pytest.mark.parametrize("command", [c for c, (mode, _) in COMMANDS.items() if mode != META])
def test_readme_command_works_as_written(command, scratch, monkeypatch, capsys):
    cwd, reside, (synthetic, tfds) = scratch
    mode, extra = COMMANDS[command]
    if "minet_its_official.pth" in command or "ckpt/official" in command:
        if not WEIGHTS.is_file():
            pytest.skip(f"needs the authors' weights at {WEIGHTS}")
    monkeypatch.chdir(cwd)
    words = shlex.split(command.replace("/data/RESIDE", str(reside)))
    main, argv = _program(words)
    argv = argv + [a.format(synthetic=synthetic, tfds=tfds) for a in extra]
    if "reside" in str(argv).lower() or "ITS" in command:
        argv += ["--set", f"data.data_dir={tfds.parent / 'tfds_reside'}"]
    if mode == PARSE:
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, args=None, namespace=None):
            raise _Parsed(original(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed):
            main(argv)
        return
    if argv[-1:] == ["--help"]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0 and "model.solver.backward = 'unrolled'" in capsys.readouterr().out
        return
    status = main(argv)
    assert status in (0, None) or isinstance(status, dict), f"{command} exited with {status}"


def test_readme_python_api_works_as_written(scratch, monkeypatch):
    cwd, _, _ = scratch
    if not WEIGHTS.is_file():
        pytest.skip(f"needs the authors' weights at {WEIGHTS}")
    monkeypatch.chdir(cwd)
    shutil.copy(cwd / "hazy.png", cwd / "hazy_copy.png")
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README's example)
        out, raw = namespace["out"], namespace["raw"]
        assert out.shape == raw.shape == (40, 48, 3) and 0 <= out.min() and out.max() <= 1
