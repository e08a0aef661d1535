"""Read PyTorch ``.pth`` checkpoints into numpy arrays without torch and without running pickled code.

Two on-disk layouts are understood:

* the zip archive written by ``torch.save`` since torch 1.6 (``<prefix>/data.pkl`` plus one
  member ``<prefix>/data/<key>`` per storage);
* the legacy stream (``_use_new_zipfile_serialization=False`` / torch < 1.6): magic number,
  protocol version, sys-info dict, the object pickle, the pickled list of storage keys, then
  each storage as an int64 element count followed by its raw little-endian bytes.

The unpickler honours only the tensor-rebuild entry points (reimplemented here), a few inert
containers (``OrderedDict``, ``set``, ``torch.Size`` as ``tuple``), and storage-type markers.
Every other global resolves to an inert name record: calling or instantiating it raises
:class:`UnsafePickleError`, except that classes announced through a ``('module', cls, ...)``
persistent id (whole pickled ``nn.Module`` trees) become inert records that only store the
state ``BUILD`` hands them. Nothing from the file is ever imported or executed.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["TorchFileError", "UnsafePickleError", "load_torch_file"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STATE_DICT_KEYS = ("state_dict", "model", "net")
# A tensor may alias its storage (stride 0), so its dense copy can exceed the storage; cap the
# excess so a crafted header cannot make us allocate without bound.
_MAX_EXPANSION_BYTES = 1 << 30

# storage class name -> (numpy dtype as stored on disk, little-endian)
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16",
    "UntypedStorage": "u1",  # torch itself loads untyped storages as uint8
    "_UntypedStorage": "u1",  # its name in torch 1.12
}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")


class UnsafePickleError(ValueError):
    """The checkpoint's pickle asks for something other than tensor rebuilding."""


class TorchFileError(ValueError):
    """The file is malformed, truncated, or in a layout this reader does not support."""


class _Refused(Exception):
    """Raised inside the unpickler; turned into :class:`UnsafePickleError` with the file name."""

    def __init__(self, name: str, action: str):
        super().__init__(name, action)
        self.name = name
        self.action = action


class _Malformed(Exception):
    """Raised inside the unpickler; turned into :class:`TorchFileError` with the file name."""


# ---------------------------------------------------------------------------------------------
# Inert objects the unpickler hands out.


class _Inert:
    """Base of the reader's own objects: BUILD (``__setstate__``) on them is refused."""

    __slots__ = ()

    def _label(self) -> str:
        return type(self).__name__

    def __setstate__(self, state: Any) -> None:
        raise _Refused(self._label(), "set state on")


class _SafeCallable(_Inert):
    """An allowlisted global: one of this module's own harmless functions under a torch name."""

    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Callable[..., Any]):
        self.name = name
        self.fn = fn

    def _label(self) -> str:
        return self.name

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class _StorageType(_Inert):
    """Marker for ``torch.FloatStorage`` and friends; only meaningful inside a persistent id."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype

    def _label(self) -> str:
        return self.name

    def __call__(self, *args: Any) -> Any:
        raise _Refused(self.name, "call")


class _Storage(_Inert):
    """A flat storage: its bytes are fetched (zip) or filled in (legacy) after unpickling."""

    __slots__ = ("data", "dtype", "fetch", "key", "numel")

    def __init__(self, key: str, dtype: str, numel: int, fetch: Callable[[], bytes] | None):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        self.fetch = fetch

    def array(self) -> np.ndarray:
        if self.data is None:
            if self.fetch is None:
                raise _Malformed(f"no data was stored for storage {self.key!r}")
            self.data = _decode_storage(self.fetch(), self.dtype, self.numel, self.key)
        return self.data


class _StorageView(_Inert):
    """A legacy-format storage that is a slice of a root storage (``view_metadata``)."""

    __slots__ = ("numel", "offset", "root")

    def __init__(self, root: _Storage, offset: int, numel: int):
        self.root = root
        self.offset = offset
        self.numel = numel

    @property
    def dtype(self) -> str:
        return self.root.dtype

    def array(self) -> np.ndarray:
        base = self.root.array()
        if self.offset < 0 or self.numel < 0 or self.offset + self.numel > base.size:
            raise _Malformed(f"storage view of {self.root.key!r} lies outside its root storage")
        return base[self.offset : self.offset + self.numel]


class _Tensor(_Inert):
    """A tensor as (storage, offset, size, stride); turned into a numpy array on demand."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise _Malformed(f"a tensor was rebuilt from {type(storage).__name__}, not a storage")
        self.storage = storage
        self.offset = _as_int(offset, "storage offset")
        self.size = tuple(_as_int(n, "size") for n in _as_sequence(size, "size"))
        self.stride = tuple(_as_int(n, "stride") for n in _as_sequence(stride, "stride"))
        if len(self.size) != len(self.stride):
            raise _Malformed(f"tensor size {self.size} and stride {self.stride} differ in length")

    def numpy(self) -> np.ndarray:
        base = self.storage.array()
        numel = int(np.prod(self.size, dtype=object)) if self.size else 1
        if any(n < 0 for n in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise _Malformed(f"negative size/stride/offset {self.size}/{self.stride}/{self.offset}")
        if numel == 0:
            return np.zeros(self.size, dtype=base.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= base.size:
            raise _Malformed(
                f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} "
                f"reaches element {last} of a storage holding {base.size}"
            )
        if numel > base.size and (numel - base.size) * base.itemsize > _MAX_EXPANSION_BYTES:
            raise _Malformed(f"tensor of size {self.size} is far larger than its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.size,
            strides=tuple(s * base.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, order="C", copy=True)


class _GlobalMeta(type):
    """Metaclass of inert name records: calling one (REDUCE, INST, OBJ) is refused."""

    _torch_name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(cls._torch_name, "call")


class _StateSlot:
    """``__setstate__`` for name records: stores state on instances, refuses on the class.

    BUILD looks ``__setstate__`` up on whatever object it targets; when that object is the
    record class itself (a bare GLOBAL followed by BUILD) this returns a refusing function.
    """

    def __get__(self, obj: Any, owner: type) -> Callable[[Any], None]:
        if obj is None:
            name = owner._torch_name

            def refuse(*_: Any) -> None:
                raise _Refused(name, "set state on")

            return refuse

        def store(state: Any) -> None:
            obj.state = state

        return store


class _GlobalRef(metaclass=_GlobalMeta):
    """Base of the per-name record classes that non-allowlisted globals resolve to.

    Instances exist only for classes announced as ``nn.Module`` subclasses by a
    ``('module', cls, source_file, source)`` persistent id; they hold the module's ``__dict__``.
    """

    __slots__ = ("state",)
    _torch_name = "?"
    _is_module = False
    __setstate__ = _StateSlot()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # NEWOBJ calls tp_new directly, bypassing the metaclass __call__.
        if not cls._is_module:
            raise _Refused(cls._torch_name, "instantiate")
        obj = object.__new__(cls)
        obj.state = None
        return obj


# ---------------------------------------------------------------------------------------------
# The allowlisted rebuild functions (safe reimplementations of torch._utils).


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    if not isinstance(data, _Tensor):
        raise _Malformed(f"a parameter was rebuilt from {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # Tensor subclasses / tensors with Python attributes: rebuild the plain tensor, drop the rest.
    if not (isinstance(func, _SafeCallable) and func.name in _REBUILDERS):
        label = func._label() if isinstance(func, _Inert) else getattr(func, "_torch_name", "?")
        raise _Refused(label, "call")
    return func(*_as_sequence(args, "rebuild arguments"))


def _no_backend() -> None:
    return None


_REBUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
}

_ALLOWED: dict[str, Callable[..., Any]] = {
    **_REBUILDERS,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "collections.OrderedDict": OrderedDict,
    "torch.Size": tuple,
    "builtins.set": set,
    "__builtin__.set": set,
    "builtins.frozenset": frozenset,
    "__builtin__.frozenset": frozenset,
    # Old torch pickled Module._backend as a call of this; it is meaningless here.
    "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
}


# ---------------------------------------------------------------------------------------------
# The unpickler.


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals to inert stand-ins and storages to lazy records."""

    def __init__(
        self,
        file: Any,
        storages: dict[str, _Storage],
        fetch: Callable[[str, str, int], Callable[[], bytes]] | None = None,
    ):
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self._fetch = fetch
        self._refs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _SafeCallable(full, _ALLOWED[full])
        if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
            return _StorageType(full, _STORAGE_DTYPES[name])
        ref = self._refs.get(full)
        if ref is None:
            label = name if name.isidentifier() else "GlobalRef"
            ref = _GlobalMeta(label, (_GlobalRef,), {"__slots__": (), "_torch_name": full})
            self._refs[full] = ref
        return ref

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise _Malformed(f"unexpected persistent id {reprlib.repr(pid)}")
        kind = _text(pid[0])
        if kind == "module":
            return self._module_class(pid)
        if kind == "storage":
            return self._storage(pid)
        raise _Malformed(f"unexpected persistent id of kind {kind!r}")

    def _module_class(self, pid: tuple) -> type:
        cls = pid[1] if len(pid) > 1 else None
        if not isinstance(cls, _GlobalMeta):
            raise _Malformed(f"a pickled module names {_describe(cls)} as its class")
        cls._is_module = True
        return cls

    def _storage(self, pid: tuple) -> _Storage | _StorageView:
        if len(pid) not in (5, 6):
            raise _Malformed(f"storage persistent id has {len(pid)} fields, expected 5 or 6")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"unsupported storage type {_describe(storage_type)}")
        key = _text(key)
        numel = _as_int(numel, "storage size")
        storage = self._storages.get(key)
        if storage is None:
            fetch = self._fetch(key, storage_type.dtype, numel) if self._fetch else None
            storage = _Storage(key, storage_type.dtype, numel, fetch)
            self._storages[key] = storage
        elif storage.dtype != storage_type.dtype:
            raise _Malformed(f"storage {key!r} is used with two dtypes")
        if view is None:
            return storage
        _view_key, offset, view_numel = _as_sequence(view, "storage view metadata")
        return _StorageView(storage, _as_int(offset, "view offset"), _as_int(view_numel, "view size"))


def _unpickle(
    stream: Any,
    storages: dict[str, _Storage],
    fetch: Callable[[str, str, int], Callable[[], bytes]] | None = None,
) -> Any:
    """Check one pickle's opcodes without running them, then unpickle it safely.

    The check makes a corrupt length or memo index a :class:`_Malformed` error instead of a
    request to the C unpickler to allocate gigabytes. `stream` is a BytesIO or an mmap.
    """
    start = stream.tell()
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
                raise _Malformed(f"memo index {arg} at byte {pos} is out of range")
    except ValueError as exc:  # genops' complaint about a bad opcode or a short read
        raise _Malformed(f"corrupt or truncated pickle ({exc})") from None
    stream.seek(start)
    return _SafeUnpickler(stream, storages, fetch).load()


# ---------------------------------------------------------------------------------------------
# Helpers.


def _text(value: Any) -> str:
    if isinstance(value, bytes):  # Python 2 pickles
        return value.decode("ascii")
    if not isinstance(value, str):
        raise _Malformed(f"expected a string, found {type(value).__name__}")
    return value


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{what} is {type(value).__name__}, expected int")
    return value


def _as_sequence(value: Any, what: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise _Malformed(f"{what} is {type(value).__name__}, expected a tuple")
    return tuple(value)


def _describe(obj: Any) -> str:
    name = getattr(obj, "_torch_name", None) if isinstance(obj, (_GlobalMeta, _GlobalRef)) else None
    if isinstance(obj, (_SafeCallable, _StorageType)):
        name = obj.name
    return repr(name) if isinstance(name, str) else reprlib.repr(obj)


def _disk_dtype(dtype: str) -> str:
    return {"bfloat16": "<u2", "bool": "u1"}.get(dtype, dtype)


def _itemsize(dtype: str) -> int:
    return np.dtype(_disk_dtype(dtype)).itemsize


def _decode_storage(raw: bytes, dtype: str, numel: int, key: str) -> np.ndarray:
    """Raw little-endian storage bytes -> 1-D native-endian numpy array of `numel` elements."""
    disk = _disk_dtype(dtype)
    itemsize = np.dtype(disk).itemsize
    if numel < 0 or len(raw) < numel * itemsize:
        raise _Malformed(f"storage {key!r} holds {len(raw)} bytes, expected {numel} x {itemsize} bytes")
    arr = np.frombuffer(raw, dtype=disk, count=numel)
    if dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dtype == "bool":
        return arr != 0
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


# ---------------------------------------------------------------------------------------------
# File layouts.

# What zipfile raises on a damaged archive (RuntimeError: an encrypted member).
_ZIP_ERRORS = (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, RuntimeError, zlib.error)


def _zip_read(zf: zipfile.ZipFile, member: str) -> bytes:
    try:
        return zf.read(member)
    except _ZIP_ERRORS as exc:
        raise _Malformed(f"cannot read archive member {member!r} ({type(exc).__name__}: {exc})") from None


def _read_zip(path: str) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise _Malformed(f"expected a zip archive, but it is corrupt or truncated ({exc})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise _Malformed(f"expected one '<prefix>/data.pkl' member, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in names:
            raise _Malformed("this is a TorchScript archive (torch.jit.save), not a torch.save file")
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = _zip_read(zf, f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder != "little":
            raise _Malformed(f"storages are stored {byteorder!r}-endian; only little-endian is supported")
        members = set(names)

        def fetch(key: str, dtype: str, numel: int) -> Callable[[], bytes]:
            member = f"{prefix}data/{key}"
            if member not in members:
                raise _Malformed(f"archive has no member {member!r} for storage {key!r}")
            if numel < 0 or zf.getinfo(member).file_size < numel * _itemsize(dtype):
                raise _Malformed(f"member {member!r} is too small for {numel} elements of {dtype}")
            return lambda: _zip_read(zf, member)

        storages: dict[str, _Storage] = {}
        return _materialize(_unpickle(io.BytesIO(_zip_read(zf, pkls[0])), storages, fetch))


def _read_legacy(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        # Reading through the map (not the file) keeps a corrupt length field in the pickle
        # from making the unpickler allocate that many bytes: reads stop at the end of the map.
        storages: dict[str, _Storage] = {}
        obj = _load_legacy(mm, storages)
    return _materialize(obj)


def _load_legacy(mm: mmap.mmap, storages: dict[str, _Storage]) -> Any:
    try:
        magic = _unpickle(mm, {})
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, _Malformed) as exc:
        raise _Malformed(f"expected a zip archive or a pickle stream ({exc})") from None
    if magic != _LEGACY_MAGIC:
        raise _Malformed("no PyTorch magic number at the start of the stream")
    protocol = _unpickle(mm, {})
    if protocol != _LEGACY_PROTOCOL:
        raise _Malformed(f"legacy protocol version {reprlib.repr(protocol)}, expected {_LEGACY_PROTOCOL}")
    sys_info = _unpickle(mm, {})
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise _Malformed("written on a big-endian machine, which is not supported")

    obj = _unpickle(mm, storages)
    keys = _unpickle(mm, {})
    for key in _as_sequence(keys, "storage key list"):
        key = _text(key)
        storage = storages.get(key)
        if storage is None:
            raise _Malformed(f"storage {reprlib.repr(key)} is stored but no tensor refers to it")
        header = mm.read(8)
        if len(header) != 8:
            raise _Malformed(f"file ends before the data of storage {key!r}")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel or count < 0:
            raise _Malformed(f"storage {key!r} holds {count} elements, expected {storage.numel}")
        nbytes = count * _itemsize(storage.dtype)
        raw = mm.read(nbytes)
        if len(raw) != nbytes:
            raise _Malformed(f"file ends inside the data of storage {key!r}")
        storage.data = _decode_storage(raw, storage.dtype, count, key)
    return obj


# ---------------------------------------------------------------------------------------------
# Finding the state dict in the loaded object.


def _module_tensors(record: Any, prefix: str, out: dict[str, _Tensor], ancestors: set[int]) -> None:
    if id(record) in ancestors:
        raise _Malformed(f"module tree contains a cycle at {prefix or '<root>'!r}")
    state = record.state
    if not isinstance(state, dict):
        raise _Malformed(f"module {prefix or '<root>'!r} ({record._torch_name}) has no state dict")
    skip = state.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, dict):
            raise _Malformed(f"{prefix}{group} is {type(entries).__name__}, expected a dict")
        for name, value in entries.items():
            if not isinstance(name, str):
                raise _Malformed(f"{prefix}{group} has a non-string key {reprlib.repr(name)}")
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, _Tensor):
                raise _Malformed(f"{prefix}{name} is {type(value).__name__}, expected a tensor")
            out[f"{prefix}{name}"] = value
    children = state.get("_modules") or {}
    if not isinstance(children, dict):
        raise _Malformed(f"{prefix}_modules is {type(children).__name__}, expected a dict")
    for name, child in children.items():
        if not isinstance(name, str):
            raise _Malformed(f"{prefix}_modules has a non-string key {reprlib.repr(name)}")
        if child is None:
            continue
        if not isinstance(child, _GlobalRef):
            raise _Malformed(f"submodule {prefix}{name} is {type(child).__name__}, not a module")
        _module_tensors(child, f"{prefix}{name}.", out, ancestors | {id(record)})


def _find_tensors(obj: Any) -> dict[str, _Tensor]:
    if isinstance(obj, _GlobalRef):
        out: dict[str, _Tensor] = {}
        _module_tensors(obj, "", out, set())
        return out
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (dict, _GlobalRef)):
                return _find_tensors(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, _Tensor)}
        if tensors:
            if not all(isinstance(k, str) for k in tensors):
                raise _Malformed("state dict has non-string keys")
            return tensors
    raise _Malformed(
        f"found {type(obj).__name__}; expected a module, a state dict, or a dict holding one "
        f"under {', '.join(repr(k) for k in _STATE_DICT_KEYS)}"
    )


def _materialize(obj: Any) -> dict[str, np.ndarray]:
    tensors = _strip_module_prefix(_find_tensors(obj))
    return {name: tensor.numpy() for name, tensor in tensors.items()}


def _strip_module_prefix(tensors: dict[str, _Tensor]) -> dict[str, _Tensor]:
    out: dict[str, _Tensor] = {}
    for name, value in tensors.items():
        short = name.removeprefix("module.")
        if short in out:
            raise _Malformed(f"two tensors are named {short!r} once 'module.' is stripped")
        out[short] = value
    return out


# ---------------------------------------------------------------------------------------------
# Public entry point.


def load_torch_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.pth`` file into a flat ``{name: array}`` state dict, running no pickled code.

    Names are those of ``model.state_dict()`` with a leading ``module.`` (DataParallel) removed;
    arrays are C-contiguous copies with PyTorch's shapes and dtypes (bfloat16 becomes float32).
    Raises :class:`UnsafePickleError` if the pickle asks for anything but tensor rebuilding and
    :class:`TorchFileError` if the file is malformed, truncated or of an unsupported layout
    (``OSError`` if it cannot be opened at all).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        if head[:4] == b"PK\x03\x04":
            return _read_zip(path)
        if not head:
            raise _Malformed("the file is empty")
        if head[257:262] == b"ustar":
            raise _Malformed("this is the tar layout of torch < 0.1.10, which is not supported")
        return _read_legacy(path)
    except _Refused as exc:
        raise UnsafePickleError(
            f"refusing to load {path}: it asks to {exc.action} {exc.name!r}, "
            "and only tensor-rebuild entries are honoured"
        ) from None
    except _Malformed as exc:
        raise TorchFileError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None
    except EOFError:
        raise TorchFileError(
            f"cannot read {path}: the file ends early (expected a complete PyTorch checkpoint)"
        ) from None
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        struct.error,
        OverflowError,
        RecursionError,
    ) as exc:
        raise TorchFileError(
            f"cannot read {path} as a PyTorch checkpoint (expected a torch.save file): {type(exc).__name__}: {exc}"
        ) from None
