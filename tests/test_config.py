"""minet_jax.config: defaults, presets, and the one override parser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minet_jax import config
from minet_jax.config import ConfigError, apply_overrides, describe, load_config, train_config

PRESETS = sorted(p.stem for p in config.CONFIG_DIR.glob("*.py"))


def test_data_config_defaults():
    c = config.data_config()
    assert (c.name, c.manual_dir, c.data_dir, c.crop_size, c.flip, c.workers) == ("synthetic", "", "", 64, True, 0)
    assert (c.val_name, c.val_manual_dir, c.val_split, c.val_limit, c.sots_dir) == ("", "", "", 0, "")


def test_variants():
    official, paper = config.model_config("official"), config.model_config("paper")
    assert (official.T, official.dilations, official.input_format, official.rca) == (8, (1, 2, 4), "bgr255", "image")
    assert (paper.T, paper.dilations, paper.input_format, paper.rca) == (12, (1, 2, 5), "rgb01", "features")
    assert [k for k, _ in describe(official)] == [k for k, _ in describe(paper)]
    with pytest.raises(ValueError, match="model.variant must be one of"):
        config.model_config("resnet")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_by_name_and_path_with_the_training_fields(name):
    by_name, by_path = load_config(name), load_config(config.CONFIG_DIR / f"{name}.py")
    assert by_name.to_dict() == by_path.to_dict()
    # A preset sets fields; it never invents one (a typo in a preset would otherwise be silent).
    schema = train_config(by_name.model.variant)
    assert [k for k, _ in describe(by_name)] == [k for k, _ in describe(schema)]


def test_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError, match=r"no such file.*presets: .*default"):
        load_config("defualt")


def test_overrides_at_any_depth_leave_the_original_alone():
    base = train_config()
    cfg = apply_overrides(
        base, ["model.T=16", "lr=1", "model.dilations=[1, 2, 5]", "data.manual_dir=12", "model.solver.tol=1e-4",
               "model.solver.backward=implicit", "progress=False", "stability.weight=0.5"],
    )  # fmt: skip
    assert (cfg.model.T, cfg.model.dilations, cfg.data.manual_dir) == (16, (1, 2, 5), "12")
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert (cfg.model.solver.tol, cfg.model.solver.backward, cfg.progress, cfg.stability.weight) == (
        1e-4, "implicit", False, 0.5,
    )  # fmt: skip
    assert base.model.T == 8 and base.lr == 2e-3 and base.model.solver.backward == "unrolled"
    # (key, value) pairs are the same overrides, parsed.
    assert apply_overrides(base, [("model.T", 16)]).model.T == 16


@pytest.mark.parametrize(
    "item,message",
    [
        ("num_step=5", r"unknown config field 'num_step': the config has no 'num_step'; did you mean num_steps\?"),
        ("model.solver.backwrd=implicit", r"model.solver has no 'backwrd'; did you mean model.solver.backward\?"),
        ("lr.x=1", r"lr is a value, not a group"),
        ("model.T=abc", r"model.T takes int values \(now 8\), got 'abc'"),
        ("model.T=2.5", r"model.T takes int values"),
        ("progress=1", r"progress takes bool values"),
        ("model.solver=3", r"model.solver is a group"),
        ("num_steps", r"expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_key(item, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(train_config(), [item])
    assert "\n" not in str(info.value)


def test_values_parse_as_json_then_python_literals_then_text():
    assert config.parse_overrides(["a=1", "b=1e-3", "c=true", "d=True", "e=(1, 2)", "f=hello", "g=[1,2]"]) == [
        ("a", 1), ("b", 1e-3), ("c", True), ("d", True), ("e", (1, 2)), ("f", "hello"), ("g", [1, 2]),
    ]  # fmt: skip


def test_keyword_overrides_and_saved_configs():
    cfg = config.with_overrides(config.model_config(), {"solver": {"tol": 1e-2}, "dtype": "bfloat16"})
    assert (cfg.solver.tol, cfg.dtype, cfg.solver.forward) == (1e-2, "bfloat16", "unrolled")
    assert config.nest([("solver.tol", 1e-2), ("T", 4)]) == {"solver": {"tol": 1e-2}, "T": 4}
    # A config saved by an older version: JSON lists, a setting this version no longer has.
    saved = {"variant": "paper", "T": 4, "dilations": [1, 2, 3], "conv_impl": "im2col"}
    full = config.model_config_from(saved)
    assert (full.T, full.dilations, full.rca) == (4, (1, 2, 3), "features") and "conv_impl" not in full


def test_every_field_has_a_one_line_help_and_the_choices_are_the_implementations():
    from minet_jax import model, solvers, training

    for variant in config.VARIANTS:
        keys = [k for k, _ in config.describe(config.train_config(variant))]
        assert [k for k in keys if k not in config.HELP] == []
    assert all("\n" not in h and h for h in config.HELP.values())
    assert config.CHOICES["model.solver.forward"] == solvers.FORWARDS
    assert config.CHOICES["model.solver.backward"] == solvers.BACKWARDS
    assert config.CHOICES["model.solver.backward_solver"] == solvers.BACKWARD_SOLVERS
    assert config.CHOICES["loss"] == training.LOSSES
    assert set(config.CHOICES["model.share_sep_impl"]) == {"auto", *model.ShareSepConv.IMPLS}
    lines = config.help_lines(config.train_config())
    assert any(line.strip().startswith("lr = 0.002") and "learning rate" in line for line in lines)


@pytest.mark.parametrize(
    ("item", "devices", "message"),
    [
        ("lr=0", 1, "config field lr must be > 0, got 0.0"),
        ("batch_size=6", 4, "config field batch_size 6 must be a multiple of the 4 devices it is sharded over"),
        ("model.solver.forward=anderzon", 1, "config field model.solver.forward must be one of 'unrolled', "
         "'fixed_point', 'anderson', got 'anderzon'; did you mean anderson?"),
        ("data.name=reside", 1, "config field data.name must be one of"),
        ("model.dilations=(1, 2)", 1, "config field model.dilations must name 3 dilations, got (1, 2)"),
        ("adam_b2=1.0", 1, "config fields adam_b1 and adam_b2 must be < 1"),
        ("num_steps=0", 1, "config field num_steps must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_check_refuses_a_config_that_cannot_run_in_one_line(item, devices, message):
    cfg = config.apply_overrides(config.train_config(), [item])
    with pytest.raises(config.ConfigError) as e:
        config.check(cfg, devices=devices)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    config.check(config.train_config(), devices=4)


def test_an_installed_copy_loads_its_presets_from_any_directory(tmp_path):
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # setuptools writes build/ into the tree it builds: a copy, not the checkout
    for name in ("pyproject.toml", "minet_jax", "configs"):
        if (root / name).is_dir():
            shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(root / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("minet_jax-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    code = (
        "import minet_jax, minet_jax.config as c; print(minet_jax.__file__); "
        "print(c.load_config('default').num_steps, sorted(p.stem for p in c.CONFIG_DIR.glob('*.py')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, check=True
    )
    where, presets = out.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site"))  # the installed copy, not the checkout
    assert presets == f"{load_config('default').num_steps} {PRESETS}"
    assert (tmp_path / "site" / "bin" / "minet-dehaze").is_file()
