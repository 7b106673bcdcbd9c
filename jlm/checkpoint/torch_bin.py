"""Reading PyTorch `torch.save` checkpoints (`pytorch_model*.bin`, JudgeLM's release format) without torch.

The file is a zip: `<prefix>/data.pkl` (a pickle of the state dict), `<prefix>/data/<key>` (raw bytes
of each storage), `<prefix>/byteorder`. A pickle can run arbitrary code, so it is read with an
unpickler that resolves only the handful of globals a state dict needs; anything else (say
`posix.system`) raises `CheckpointError` when the pickle names it, before it can be called.

Storages become numpy views of a read-only memory map of the zip member (torch stores members
uncompressed), so loading the state dict reads no tensor data; a tensor's bytes are paged in when
the caller reads it.
"""
from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jlm.checkpoint.errors import CheckpointError


@dataclass(frozen=True)
class StorageType:
    """Stands in for a `torch.<X>Storage` class in the pickle: only its element dtype matters."""
    name: str
    dtype: np.dtype


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size, stride) -> np.ndarray:
    """A tensor as numpy: a view of its storage when contiguous (always, for HF checkpoints),
    otherwise a strided copy."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    numel = math.prod(size)
    if numel == 0:
        return np.empty(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset < 0 or last >= storage.shape[0] or min(stride, default=0) < 0:
        raise ValueError(f"tensor of size {size} stride {stride} at offset {storage_offset} "
                         f"does not fit its storage of {storage.shape[0]} elements")
    contiguous, expected = True, 1
    for n, s in reversed(list(zip(size, stride, strict=True))):
        if n != 1 and s != expected:
            contiguous = False
        expected *= n
    if contiguous:
        return storage[storage_offset:storage_offset + numel].reshape(size)
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> np.ndarray:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    return data


# (module, name) -> what the pickle gets instead. Nothing else resolves.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(name, np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, load_storage: Callable[[StorageType, str, int], np.ndarray]):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._path}: refusing to unpickle: it references the global {module}.{name}, which a "
                f"PyTorch state dict does not need (allowed: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED))})") from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        # torch writes ('storage', storage_type, key, location, numel) for every storage.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise CheckpointError(f"{self._path}: unexpected persistent id in the pickle: {pid!r:.200}")
        _, stype, key, _location, numel = pid
        return self._load_storage(stype, str(key), int(numel))


class TorchZip:
    """One `torch.save` zip file, memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not zipfile.is_zipfile(self.path):
            with open(self.path, "rb") as f:
                magic = f.read(2)
            why = ("it is the legacy (PyTorch < 1.6) torch.save format; re-save it with a newer torch"
                   if magic[:1] == b"\x80" else "not a zip file")
            raise CheckpointError(f"{self.path}: cannot read this .bin: {why}")
        with zipfile.ZipFile(self.path) as zf:
            self._members = {info.filename: info for info in zf.infolist()}
            pkls = [n for n in self._members if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise CheckpointError(f"{self.path}: not a torch.save archive (expected one */data.pkl, "
                                      f"found {len(pkls)})")
            self._prefix = pkls[0][: -len("data.pkl")]
            self._pickle = zf.read(pkls[0])
            order = self._members.get(self._prefix + "byteorder")
            self._big_endian = order is not None and zf.read(order).strip() == b"big"
        with open(self.path, "rb") as f:
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _member_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start: after its local header, whose extra field may
        differ from the central directory's (zip64), so read it from the local header itself."""
        header = self._mmap[info.header_offset:info.header_offset + 30]
        if header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: corrupt zip: no local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def _storage(self, stype: StorageType, key: str, numel: int) -> np.ndarray:
        name = f"{self._prefix}data/{key}"
        info = self._members.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: storage {key!r} is missing from the archive ({name})")
        nbytes = numel * stype.dtype.itemsize
        if info.file_size < nbytes:
            raise CheckpointError(f"{self.path}: storage {key!r} ({stype.name}, {numel} elements) needs "
                                  f"{nbytes} bytes, the archive member holds {info.file_size}")
        if info.compress_type == zipfile.ZIP_STORED:
            buf: Any = self._mmap
            offset = self._member_offset(info)
            if offset + nbytes > len(self._mmap):
                raise CheckpointError(f"{self.path}: truncated: storage {key!r} runs past the end of the file")
        else:  # torch never compresses, but a re-zipped file might be
            with zipfile.ZipFile(self.path) as zf:
                buf, offset = zf.read(name), 0
        if self._big_endian:  # swap to the (little-endian) host order, then reinterpret
            unsigned = f"u{stype.dtype.itemsize}"
            raw = np.frombuffer(buf, np.dtype(">" + unsigned), count=numel, offset=offset)
            return raw.astype("<" + unsigned).view(stype.dtype)
        return np.frombuffer(buf, stype.dtype, count=numel, offset=offset)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The pickled state dict; values are numpy views that read lazily from the file."""
        try:
            obj = _RestrictedUnpickler(io.BytesIO(self._pickle), self.path, self._storage).load()
        except CheckpointError:
            raise
        except Exception as e:  # a malformed pickle: name the file, keep the cause
            raise CheckpointError(f"{self.path}: cannot unpickle data.pkl: {type(e).__name__}: {e}") from e
        if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
            raise CheckpointError(f"{self.path}: expected a state dict of tensors, got {type(obj).__name__}")
        return dict(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{name: array}` of a `torch.save` zip; arrays are lazy read-only views (bf16 as ml_dtypes.bfloat16)."""
    return TorchZip(path).state_dict()


def iter_file(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of one .bin file, in the pickle's order."""
    yield from load_state_dict(path).items()


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    return {name: tuple(a.shape) for name, a in load_state_dict(path).items()}
