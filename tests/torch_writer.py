"""Write PyTorch-format checkpoints without torch, for testing `minet_jax.torch_pickle`.

Stand-ins (:class:`Global`, :class:`Storage`, :class:`Tensor`, :class:`Parameter`,
:class:`Module`, :class:`Reduce`) are pickled by a pure-Python pickler subclass into the same
opcodes ``torch.save`` emits (protocol 2). Both the zip layout and the legacy stream are written.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class Global:
    """A module-level name, pickled as ``GLOBAL module name`` without importing anything."""

    _cache: ClassVar[dict[tuple[str, str], Global]] = {}

    def __new__(cls, module: str, name: str) -> Self:
        key = (module, name)
        if key not in cls._cache:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args: Any) -> Any:  # pickle's save_reduce insists on a callable
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


REBUILD_TENSOR_V2 = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
ORDERED_DICT = Global("collections", "OrderedDict")


class Storage:
    """A flat storage; `data` is a 1-D array whose dtype picks the storage type."""

    def __init__(self, data: np.ndarray, key: str | None = None, storage_type: Global | None = None):
        self.data = np.ascontiguousarray(data).reshape(-1)
        self.key = key
        self.storage_type = storage_type or Global("torch", _STORAGE_NAMES[self.data.dtype])


class StorageView:
    """Legacy format only: a storage that is a slice of `root` (a pid with ``view_metadata``)."""

    def __init__(self, root: Storage, offset: int, numel: int, key: str):
        self.root, self.offset, self.numel, self.key = root, offset, numel, key


class Tensor:
    """A tensor view (offset, size, stride in elements) of a :class:`Storage`."""

    def __init__(self, storage: Storage | StorageView, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @classmethod
    def of(cls, array: np.ndarray) -> Tensor:
        """A contiguous tensor holding a copy of `array`."""
        array = np.ascontiguousarray(array)
        strides = tuple(s // array.itemsize for s in array.strides)
        return cls(Storage(array), 0, array.shape, strides)


class Parameter:
    """``nn.Parameter`` wrapping a :class:`Tensor`."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


class Module:
    """A whole pickled ``nn.Module``: class announced by a ('module', ...) persistent id."""

    def __init__(self, cls: Global, parameters=(), buffers=(), modules=(), **attrs: Any):
        self.cls = cls
        self.state = {
            "_backend": Reduce(Global("torch.nn.backends.thnn", "_get_thnn_function_backend"), ()),
            "_parameters": OrderedDict(parameters),
            "_buffers": OrderedDict(buffers),
            "_modules": OrderedDict(modules),
            "training": True,
            **attrs,
        }


class Reduce:
    """Pickled as ``func args REDUCE`` (e.g. a payload ``posix.system('...')``)."""

    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args


class NewObj:
    """Pickled as ``cls args NEWOBJ`` then, if `state` is given, ``state BUILD``."""

    def __init__(self, cls: Global, args: tuple = (), state: Any = None):
        self.cls, self.args, self.state = cls, args, state


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us add dispatch entries
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def __init__(self, file: io.BytesIO, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storage_keys: dict[int, str] = {}
        self.storages: list[Storage] = []
        self.module_classes: set[int] = set()
        self.pending_modules: set[int] = set()

    def _key(self, storage: Storage) -> str:
        key = self.storage_keys.get(id(storage))
        if key is None:
            key = storage.key or str(len(self.storages))
            self.storage_keys[id(storage)] = key
            self.storages.append(storage)
        return key

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            pid = ("storage", obj.storage_type, self._key(obj), "cpu", obj.data.size)
            return pid + (None,) if self.legacy else pid
        if isinstance(obj, StorageView):
            assert self.legacy, "storage views exist only in the legacy format"
            root = obj.root
            return (
                "storage",
                root.storage_type,
                self._key(root),
                "cpu",
                root.data.size,
                (obj.key, obj.offset, obj.numel),
            )
        if isinstance(obj, Global) and id(obj) in self.pending_modules:
            self.pending_modules.discard(id(obj))
            return ("module", obj, f"/src/{obj.module}.py", f"class {obj.name}(nn.Module): ...")
        return None

    def save_global_stub(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def save_tensor(self, obj: Tensor) -> None:
        args = (obj.storage, obj.offset, tuple(obj.size), tuple(obj.stride), False, OrderedDict())
        self.save_reduce(REBUILD_TENSOR_V2, args, obj=obj)

    def save_parameter(self, obj: Parameter) -> None:
        self.save_reduce(REBUILD_PARAMETER, (obj.tensor, True, OrderedDict()), obj=obj)

    def save_module(self, obj: Module) -> None:
        if id(obj.cls) not in self.module_classes:
            # First use: torch emits the class through a persistent id; later uses are
            # plain GLOBALs (memoised), exactly as in real whole-model pickles.
            self.module_classes.add(id(obj.cls))
            self.pending_modules = {id(obj.cls)}
        self.save(obj.cls)
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def save_reduce_stub(self, obj: Reduce) -> None:
        self.save_reduce(obj.func, obj.args, obj=obj)

    def save_newobj(self, obj: NewObj) -> None:
        self.save(obj.cls)
        self.save(tuple(obj.args))
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def save_ordered_dict(self, obj: OrderedDict) -> None:
        # Like OrderedDict.__reduce__, but naming our Global stand-in; keeps any __dict__ state.
        state = vars(obj) or None
        self.save_reduce(ORDERED_DICT, (), state=state, dictitems=iter(obj.items()), obj=obj)

    dispatch[Global] = save_global_stub
    dispatch[Tensor] = save_tensor
    dispatch[Parameter] = save_parameter
    dispatch[Module] = save_module
    dispatch[Reduce] = save_reduce_stub
    dispatch[NewObj] = save_newobj
    dispatch[OrderedDict] = save_ordered_dict


def dumps(obj: Any, legacy: bool = False) -> tuple[bytes, list[tuple[str, Storage]]]:
    """Pickle `obj` as torch would; returns the bytes and the (key, storage) pairs it used."""
    buf = io.BytesIO()
    pickler = _Pickler(buf, legacy)
    pickler.dump(obj)
    return buf.getvalue(), [(pickler.storage_keys[id(s)], s) for s in pickler.storages]


def write_zip(path: Path, obj: Any, prefix: str = "archive", pickle_bytes: bytes | None = None) -> Path:
    """Write `obj` in the torch >= 1.6 zip layout (or `pickle_bytes` as data.pkl verbatim)."""
    data, storages = dumps(obj) if pickle_bytes is None else (pickle_bytes, [])
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, storage in storages:
            zf.writestr(f"{prefix}/data/{key}", storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
        zf.writestr(f"{prefix}/version", "3\n")
        zf.writestr(f"{prefix}/.data/serialization_id", "0123456789")
    return path


def write_legacy(path: Path, obj: Any, pickle_bytes: bytes | None = None) -> Path:
    """Write `obj` in the legacy (torch < 1.6) stream layout (or `pickle_bytes` as the object)."""
    data, storages = dumps(obj, legacy=True) if pickle_bytes is None else (pickle_bytes, [])
    sys_info = {
        "protocol_version": LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    with open(path, "wb") as f:
        f.writelines(pickle.dumps(head, protocol=2) for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info))
        f.write(data)
        f.write(pickle.dumps([key for key, _ in storages], protocol=2))
        for _, storage in storages:
            f.write(struct.pack("<q", storage.data.size))
            f.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
    return path
