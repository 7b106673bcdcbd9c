"""The torch-free PyTorch .bin reader: real torch.save output, hand-made archives, hostile pickles."""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path
from unittest import mock

import ml_dtypes
import numpy as np
import pytest

from jlm.checkpoint import CheckpointError, iter_tensors, read_config, tensor_shapes
from jlm.checkpoint.torch_bin import load_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_torch" / "pytorch_model.bin"

_STORAGE_OF = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
               np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage"}


# ------------------------------------------------------------------ a torch.save writer without torch
class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage: _Storage, offset: int, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            stype = getattr(sys.modules["torch"], _STORAGE_OF[obj.array.dtype])
            return ("storage", stype, obj.key, "cpu", obj.array.size)
        return None


def _fake_torch() -> dict[str, types.ModuleType]:
    """Modules named like torch's, so pickle writes the same GLOBAL opcodes torch.save writes."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name goes into the pickle
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGE_OF.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    return {"torch": torch, "torch._utils": utils}


def write_torch_zip(path: Path, state: dict, *, byteorder: str = "little", pickle_bytes: bytes | None = None) -> None:
    """`state` maps names to arrays or `_Tensor`s (for views); other values are pickled as they are."""
    storages: dict[str, _Storage] = {}
    objs = collections.OrderedDict()
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            stride = [int(np.prod(value.shape[i + 1:])) for i in range(value.ndim)]
            value = _Tensor(_Storage(str(len(storages)), np.ascontiguousarray(value).ravel()), 0, value.shape, stride)
        if isinstance(value, _Tensor):
            storages.setdefault(value.storage.key, value.storage)
        objs[name] = value
    if pickle_bytes is None:
        buf = io.BytesIO()
        with mock.patch.dict(sys.modules, _fake_torch()):
            _Pickler(buf, protocol=2).dump(objs)
        pickle_bytes = buf.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", byteorder)
        for st in storages.values():
            unsigned = f"u{st.array.dtype.itemsize}"  # byte-swap via same-width unsigned ints (works for bf16)
            data = (st.array.tobytes() if byteorder == "little"
                    else st.array.view(unsigned).astype(">" + unsigned).tobytes())
            zf.writestr(f"archive/data/{st.key}", data)
        zf.writestr("archive/version", "3\n")


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"model.embed_tokens.weight": rng.standard_normal((10, 4)).astype(ml_dtypes.bfloat16),
            "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((4, 4)).astype(np.float16),
            "model.norm.weight": rng.standard_normal(4).astype(np.float32)}


def _assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


# ------------------------------------------------------------------------------------------ tests
def test_real_torch_save_fixture():
    sd = load_state_dict(FIXTURE)
    q = (np.arange(12, dtype=np.float32).reshape(3, 4) / 8 - 0.75).astype(ml_dtypes.bfloat16)
    _assert_bits_equal(sd["model.layers.0.self_attn.q_proj.weight"], q)
    up = ((np.arange(6, dtype=np.float32) - 2.5) / 3).reshape(2, 3).astype(np.float16)
    _assert_bits_equal(sd["model.layers.0.mlp.up_proj.weight"], up)
    _assert_bits_equal(sd["transposed"], np.arange(6, dtype=np.float32).reshape(2, 3).T.copy())
    base = np.arange(10, dtype=np.float32) - 4.5
    _assert_bits_equal(sd["shared.base"], base)
    _assert_bits_equal(sd["shared.view"], base[2:8].reshape(2, 3))
    _assert_bits_equal(sd["int64"], np.arange(3, dtype=np.int64) * 1000)
    _assert_bits_equal(sd["param"], np.full(2, 0.5, np.float32))
    # Through the public reader: inv_freq buffers are dropped.
    names = [n for n, _ in iter_tensors(FIXTURE)]
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in names and len(names) == 7
    assert tensor_shapes(FIXTURE)["transposed"] == (3, 2)


def test_stand_in_writer_roundtrip_bf16_fp16_exact(tmp_path):
    want = _state()
    write_torch_zip(tmp_path / "pytorch_model.bin", want)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    got = dict(iter_tensors(tmp_path))
    for k in want:
        _assert_bits_equal(got[k], want[k])
    assert read_config(tmp_path) == {"model_type": "llama"}


def test_sharded_bin_with_index(tmp_path):
    a, b = _state(1), _state(2)
    b = {k.replace("layers.0", "layers.1"): v for k, v in b.items() if "layers" in k}
    write_torch_zip(tmp_path / "pytorch_model-00001-of-00002.bin", a)
    write_torch_zip(tmp_path / "pytorch_model-00002-of-00002.bin", b)
    index = {"weight_map": {**{k: "pytorch_model-00001-of-00002.bin" for k in a},
                            **{k: "pytorch_model-00002-of-00002.bin" for k in b}}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    got = dict(iter_tensors(tmp_path))
    assert set(got) == set(a) | set(b)
    for k, v in {**a, **b}.items():
        _assert_bits_equal(got[k], v)
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="missing shard pytorch_model-00002-of-00002.bin"):
        list(iter_tensors(tmp_path))


def test_views_with_offset_and_stride(tmp_path):
    base = np.arange(24, dtype=np.float32)
    st = _Storage("7", base)
    write_torch_zip(tmp_path / "x.bin", {"full": _Tensor(st, 0, (4, 6), (6, 1)),
                                         "slice": _Tensor(st, 6, (2, 3), (3, 1)),
                                         "transposed": _Tensor(st, 0, (6, 4), (1, 6))})
    sd = load_state_dict(tmp_path / "x.bin")
    np.testing.assert_array_equal(sd["full"], base.reshape(4, 6))
    np.testing.assert_array_equal(sd["slice"], base[6:12].reshape(2, 3))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(4, 6).T)


def test_view_past_storage_end_is_an_error(tmp_path):
    st = _Storage("0", np.arange(4, dtype=np.float32))
    write_torch_zip(tmp_path / "x.bin", {"w": _Tensor(st, 2, (2, 2), (2, 1))})
    with pytest.raises(CheckpointError, match="does not fit its storage"):
        load_state_dict(tmp_path / "x.bin")


def test_big_endian_archive(tmp_path):
    want = _state(3)
    write_torch_zip(tmp_path / "be.bin", want, byteorder="big")
    sd = load_state_dict(tmp_path / "be.bin")
    for k in want:
        _assert_bits_equal(sd[k], want[k])


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def test_pickle_calling_os_system_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    with mock.patch.dict(sys.modules, _fake_torch()):
        _Pickler(buf, protocol=2).dump(collections.OrderedDict(
            [("model.norm.weight", _Tensor(_Storage("0", np.ones(2, np.float32)), 0, (2,), (1,))),
             ("payload", _Evil(marker))]))
    write_torch_zip(tmp_path / "evil.bin", {"model.norm.weight": np.ones(2, np.float32)}, pickle_bytes=buf.getvalue())
    with pytest.raises(CheckpointError, match=r"evil\.bin: refusing to unpickle: .*global posix\.system"):
        list(iter_tensors(tmp_path / "evil.bin"))
    assert not marker.exists()


def test_pickle_calling_eval_is_refused(tmp_path):
    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump({"x": _EvalEvil()})
    write_torch_zip(tmp_path / "evil.bin", {}, pickle_bytes=buf.getvalue())
    with pytest.raises(CheckpointError, match=r"global (__builtin__|builtins)\.eval"):
        load_state_dict(tmp_path / "evil.bin")


def test_not_a_state_dict(tmp_path):
    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump([1, 2, 3])
    write_torch_zip(tmp_path / "list.bin", {}, pickle_bytes=buf.getvalue())
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_state_dict(tmp_path / "list.bin")


def test_legacy_and_non_zip_files(tmp_path):
    (tmp_path / "legacy.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="legacy"):
        load_state_dict(tmp_path / "legacy.bin")
    (tmp_path / "junk.bin").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a zip file"):
        load_state_dict(tmp_path / "junk.bin")


def test_missing_storage_member(tmp_path):
    write_torch_zip(tmp_path / "ok.bin", _state())
    with zipfile.ZipFile(tmp_path / "ok.bin") as src, zipfile.ZipFile(tmp_path / "bad.bin", "w") as dst:
        for info in src.infolist():
            if info.filename != "archive/data/1":
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match=r"bad\.bin: storage '1' is missing"):
        load_state_dict(tmp_path / "bad.bin")
