"""minet_jax.config: defaults, presets, and the one override parser."""

from __future__ import annotations

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
