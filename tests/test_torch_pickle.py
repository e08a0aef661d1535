"""Tests for the torch-free, code-free `.pth` reader (`minet_jax.torch_pickle`)."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from minet_jax.torch_pickle import TorchFileError, UnsafePickleError, load_torch_file
from tests.torch_writer import (
    Global,
    Module,
    NewObj,
    Parameter,
    Reduce,
    Storage,
    StorageView,
    Tensor,
    dumps,
    write_legacy,
    write_zip,
)

FORMATS = {"zip": write_zip, "legacy": write_legacy}
CONV2D = Global("torch.nn.modules.conv", "Conv2d")
NORM = Global("torch.nn.modules.instancenorm", "InstanceNorm2d")
SYSTEM = Global(os.system.__module__, "system")  # 'posix' on Linux, as a real payload names it


def _write(fmt: str, path: Path, obj=None, pickle_bytes: bytes | None = None) -> Path:
    return FORMATS[fmt](path, obj, pickle_bytes=pickle_bytes)


def _state_dict_fixture():
    """Stand-in state dict (with a DataParallel prefix) and the arrays it should read back as."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    double = rng.standard_normal((2, 5))
    count = rng.integers(-(2**40), 2**40, size=(6,), dtype=np.int64)
    base = rng.standard_normal((5, 7)).astype(np.float32)
    flat = rng.standard_normal(20).astype(np.float32)
    shared = Storage(flat)

    sd = OrderedDict()
    sd["module.conv.weight"] = Parameter(Tensor.of(weight))
    sd["module.double"] = Tensor.of(double)
    sd["module.count"] = Tensor.of(count)
    sd["module.steps"] = Tensor(Storage(np.array([7], np.int64)), 0, (), ())
    # Transposed view: size (7, 5) with stride (1, 7) over a row-major (5, 7) storage.
    sd["module.transposed"] = Tensor(Storage(base), 0, (7, 5), (1, 7))
    # Two tensors sharing one storage, at different offsets.
    sd["module.shared_a"] = Tensor(shared, 6, (2, 3), (3, 1))
    sd["module.shared_b"] = Tensor(shared, 1, (4,), (2,))
    sd.__dict__["_metadata"] = OrderedDict({"": {"version": 1}})  # as state_dict() sets it

    expected = {
        "conv.weight": weight,
        "double": double,
        "count": count,
        "steps": np.array(7, np.int64),
        "transposed": base.T,
        "shared_a": flat[6:12].reshape(2, 3),
        "shared_b": flat[1:9:2],
    }
    return {"epoch": 3, "state_dict": sd, "best": 0.5}, expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    obj, expected = _state_dict_fixture()
    loaded = load_torch_file(_write(fmt, tmp_path / f"sd_{fmt}.pth", obj))
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.flags.c_contiguous and got.flags.owndata, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    loaded["shared_a"][...] = 0  # copies: no aliasing between tensors of one storage
    np.testing.assert_array_equal(loaded["shared_b"], expected["shared_b"])


def test_legacy_storage_view(tmp_path: Path) -> None:
    """Legacy persistent ids may name a slice of a root storage (view_metadata)."""
    flat = np.arange(12, dtype=np.float64)
    view = StorageView(Storage(flat), offset=4, numel=6, key="view0")
    obj = OrderedDict(a=Tensor(view, 1, (2, 2), (1, 2)), b=Tensor.of(np.ones(2, np.int32)))
    loaded = load_torch_file(write_legacy(tmp_path / "view.pth", obj))
    # view = flat[4:10] = [4..9]; a[i, j] = view[1 + i + 2 j]
    np.testing.assert_array_equal(loaded["a"], np.array([[5.0, 7.0], [6.0, 8.0]]))
    np.testing.assert_array_equal(loaded["b"], np.ones(2, np.int32))


def test_zip_with_other_prefix_and_plain_state_dict(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = write_zip(tmp_path / "p.pth", OrderedDict(w=Tensor.of(weight)), prefix="my_model_v2")
    loaded = load_torch_file(path)
    assert list(loaded) == ["w"]
    np.testing.assert_array_equal(loaded["w"], weight)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_half_bool_untyped(tmp_path: Path, fmt: str) -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # these values are exact in bfloat16
    bf16 = Storage(bits, storage_type=Global("torch", "BFloat16Storage"))
    half = np.array([0.5, -1.0, 65504.0], np.float16)
    flags = np.array([True, False, True])
    raw = np.arange(8, dtype=np.uint8)
    untyped = Storage(raw, storage_type=Global("torch.storage", "UntypedStorage"))
    obj = {
        "model": {
            "bf": Tensor(bf16, 0, (4,), (1,)),
            "half": Tensor.of(half),
            "flags": Tensor.of(flags),
            "bytes": Tensor(untyped, 2, (3,), (2,)),
        }
    }
    loaded = load_torch_file(_write(fmt, tmp_path / "x.pth", obj))
    np.testing.assert_array_equal(loaded["bf"], values)
    assert loaded["bf"].dtype == np.float32
    np.testing.assert_array_equal(loaded["half"], half)
    np.testing.assert_array_equal(loaded["flags"], flags)
    np.testing.assert_array_equal(loaded["bytes"], raw[2:8:2])
    assert loaded["bytes"].dtype == np.uint8


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_pickled_module_tree(tmp_path: Path, fmt: str) -> None:
    """Like the official file: {'epoch', 'model': DataParallel(Net)} with every module pickled."""
    rng = np.random.default_rng(1)
    w1, w2, b2 = (rng.standard_normal(s).astype(np.float32) for s in [(8, 3, 3, 3), (8, 8, 1, 1), (8,)])
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    net = Module(
        Global("MINet", "Net"),
        modules=[
            ("conv1", Module(CONV2D, parameters=[("weight", Parameter(Tensor.of(w1))), ("bias", None)])),
            (
                "norm",
                Module(
                    NORM,
                    parameters=[("weight", Parameter(Tensor.of(g))), ("bias", Parameter(Tensor.of(b)))],
                    buffers=[("running_mean", None), ("running_var", None)],
                ),
            ),
            # Second Conv2d: its class is now a memoised plain GLOBAL, not a persistent id.
            (
                "conv2",
                Module(
                    CONV2D,
                    parameters=[("weight", Parameter(Tensor.of(w2))), ("bias", Parameter(Tensor.of(b2)))],
                    buffers=[("scratch", Tensor.of(b2))],
                    _non_persistent_buffers_set=Reduce(Global("builtins", "set"), (["scratch"],)),
                ),
            ),
            ("act", None),
        ],
        only_residual=True,
    )
    model = Module(
        Global("torch.nn.parallel.data_parallel", "DataParallel"), modules=[("module", net)], dim=0, device_ids=[0, 1]
    )
    data, _ = dumps({"epoch": 175, "model": model})
    # The Conv2d class is emitted once (inside its persistent id) and memoised thereafter.
    assert data.count(b"ctorch.nn.modules.conv\nConv2d\n") == 1

    loaded = load_torch_file(_write(fmt, tmp_path / "m.pth", {"epoch": 175, "model": model}))
    assert list(loaded) == ["conv1.weight", "norm.weight", "norm.bias", "conv2.weight", "conv2.bias"]
    np.testing.assert_array_equal(loaded["conv1.weight"], w1)
    np.testing.assert_array_equal(loaded["conv2.bias"], b2)


# --- refusing code --------------------------------------------------------------------------


def _payloads(marker: Path) -> dict[str, tuple[object | None, bytes | None, str]]:
    """name -> (stand-in object or None, raw pickle bytes or None, the refused global)."""
    cmd = f"touch {marker}"

    class Evil:
        def __reduce__(self):
            return (os.system, (cmd,))

    ok = OrderedDict(w=Tensor.of(np.zeros(2, np.float32)))
    module = os.system.__module__
    return {
        "system_reduce": ({"state_dict": ok, "x": Reduce(SYSTEM, (cmd,))}, None, f"{module}.system"),
        "os_system_reduce": ({"x": Reduce(Global("os", "system"), (cmd,)), "state_dict": ok}, None, "os.system"),
        "eval_reduce": (
            {"state_dict": ok, "x": Reduce(Global("builtins", "eval"), (f"__import__('os').system({cmd!r})",))},
            None,
            "builtins.eval",
        ),
        "newobj_non_module": (
            {"state_dict": ok, "x": NewObj(Global("subprocess", "Popen"), (["touch", str(marker)],), {"x": 1})},
            None,
            "subprocess.Popen",
        ),
        "stack_global_protocol4": (None, pickle.dumps(Evil(), protocol=4), f"{module}.system"),
        "inst_opcode": (None, f"(S'{cmd}'\ni{module}\nsystem\n.".encode(), f"{module}.system"),
        "obj_opcode": (None, f"(c{module}\nsystem\nS'{cmd}'\no.".encode(), f"{module}.system"),
        "build_on_global": (None, f"c{module}\nsystem\n}}b.".encode(), f"{module}.system"),
        "reduce_of_module_class": (
            # A class announced as an nn.Module may be instantiated inertly, never called.
            {"model": Module(Global("MINet", "Net")), "x": Reduce(Global("MINet", "Net"), (cmd,))},
            None,
            "MINet.Net",
        ),
        "rebuild_from_type_v2_payload": (
            {"x": Reduce(Global("torch._tensor", "_rebuild_from_type_v2"), (SYSTEM, SYSTEM, (cmd,), {}))},
            None,
            f"{module}.system",
        ),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(_payloads(Path("/x"))))
def test_malicious_files_are_refused(tmp_path: Path, fmt: str, name: str) -> None:
    marker = tmp_path / "pwned"
    obj, raw, refused = _payloads(marker)[name]
    path = _write(fmt, tmp_path / f"evil_{name}.pth", obj, pickle_bytes=raw)
    with pytest.raises(UnsafePickleError) as info:
        load_torch_file(path)
    message = str(info.value)
    assert str(path) in message and repr(refused) in message
    assert not marker.exists()


@pytest.mark.parametrize("name", ["system_reduce", "eval_reduce", "stack_global_protocol4", "inst_opcode"])
def test_payloads_are_live(tmp_path: Path, name: str) -> None:
    """Control: the plain pickle module really runs these payloads (so refusing them matters)."""
    marker = tmp_path / "pwned"
    obj, raw, _ = _payloads(marker)[name]
    data = raw if raw is not None else dumps(obj["x"])[0]  # the payload alone: no torch globals
    with contextlib.suppress(Exception):  # the payload has run by the time anything fails
        pickle.loads(data)
    assert marker.exists()


# --- malformed files ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, fmt: str, keep: float) -> None:
    obj, _ = _state_dict_fixture()
    path = _write(fmt, tmp_path / "full.pth", obj)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TorchFileError, match=re.escape(str(cut))):
        load_torch_file(cut)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a checkpoint\n", bytes(range(256)) * 4, pickle.dumps({"a": 1}, protocol=2)],
    ids=["empty", "text", "binary", "plain_pickle"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(TorchFileError, match=re.escape(str(path))):
        load_torch_file(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strides_outside_storage(tmp_path: Path, fmt: str) -> None:
    storage = Storage(np.zeros(10, np.float32))
    path = _write(fmt, tmp_path / "oob.pth", {"state_dict": {"w": Tensor(storage, 4, (3, 3), (3, 1))}})
    with pytest.raises(TorchFileError, match="storage holding 10"):
        load_torch_file(path)


def test_zip_missing_storage_member(tmp_path: Path) -> None:
    data, _ = dumps({"w": Tensor.of(np.zeros(3, np.float32))})
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
    with pytest.raises(TorchFileError, match="no member 'archive/data/0'"):
        load_torch_file(path)


def test_no_tensors(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "empty.pth", {"epoch": 1})
    with pytest.raises(TorchFileError, match="expected a module, a state dict"):
        load_torch_file(path)


# --- the authors' checkpoint ----------------------------------------------------------------


def test_official_weights(official_weights: Path) -> None:
    sd = load_torch_file(official_weights)
    assert sum(v.size for v in sd.values()) == 628_078
    assert len(sd) == 73
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in sd.values())
    assert not any(name.startswith("module.") for name in sd)
    shapes = {
        "conv1.weight": (64, 3, 3, 3),
        "norm1.weight": (64,),
        "deconv3.weight": (64, 64, 4, 4),
        "res4.pre_conv1.weight": (1, 1, 7, 7),
        "res2.pre_conv1.weight": (1, 1, 3, 3),
        "gate.weight": (3, 192, 3, 3),
        "gate.bias": (3,),
        "layer1.2.weight": (1, 1),
        "layer1.3.bias": (1,),
        "pre_processing.2.conv2.weight": (64, 64, 3, 3),
        "deconv.weight": (3, 3, 1, 1),
    }
    for name, shape in shapes.items():
        assert sd[name].shape == shape, name
    assert not any("running" in name for name in sd)  # affine InstanceNorm, no running stats
