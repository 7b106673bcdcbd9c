"""Judge throughput of jlm's engine on the same work as benchmarks/peers/hf_peer_judge.py.

A LLaMA shape with random bf16 weights (speed does not depend on the values), N prompts whose
lengths are uniform in [min_len, max_len) drawn exactly as the peer draws them (same seed, same
generator), and greedy decoding of exactly `--new-tokens` tokens per prompt (stops disabled, like
the peer's min_new_tokens). Run it in the same device call as the peer so the ratio is taken on
one machine:

    python3 scripts/bench_judge.py --preset 7b --n 512 --batch 64 --new-tokens 6
    python3 benchmarks/peers/hf_peer_judge.py --preset 7b --n 512 --batch 64 --new-tokens 6   # the peer
    python3 scripts/bench_judge.py --preset 7b --n 256 --batch 64 --new-tokens 128
    python3 scripts/bench_judge.py --preset tiny --n 24 --batch 8        # CPU smoke test
    python3 scripts/bench_judge.py --plan-only --new-tokens 6 128 --reasons-n 256   # no model, any CPU

--plan-only builds no model: for the same prompt lengths it prints the batch plan's statistics
(padding, batches, program shapes, the planner's cost-model estimate) for the old fixed chunking
and for the engine's planner. Those are properties of the plan, not speed measurements.

Prints one JSON line per measurement ({"bench": "jlm", "samples_per_s": ...}) and a summary table:
end-to-end samples/s (programs compiled beforehand; the first pass follows the peer's one-batch
warm-up, the reported steady state is the pass after it, when every program has run once), model
TFLOP/s (2 x parameters x real tokens; padding is not counted), the compute ceiling for this work,
the prefill / decode split, and throughput by prompt length (per batch) and by batch size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jlm.infer.engine import Engine, Planner, default_mesh  # noqa: E402
from jlm.model.config import MODEL_SHAPES, LlamaConfig  # noqa: E402
from jlm.model.llama import Llama, ModelOptions  # noqa: E402

SHAPES = {
    "7b": MODEL_SHAPES["judgelm-7b"],
    "13b": MODEL_SHAPES["judgelm-13b"],
    "1b": MODEL_SHAPES["llama-1b"],
    "tiny": LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=4, head_dim=16, max_position_embeddings=2048),
}
PEAK_TFLOPS = 800.0  # dense bf16 matmul measured on this workplace's H100 (KINDS.md: 798 TFLOP/s)


def prompts(n, lo, hi, seed, vocab):
    """Exactly benchmarks/peers/hf_peer_judge.py's prompts."""
    rng = np.random.default_rng(seed)
    return [rng.integers(100, vocab - 100, size=int(l)).tolist() for l in rng.integers(lo, hi, size=n)]


def fixed_plan(lengths, batch_size):
    """The engine's former planner, for comparison: longest first, batch_size at a time."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def plan_only(a, cfg):
    """Plan statistics of the old fixed chunking and the engine's planner on the benchmark's prompt
    lengths, for a bf16 model on one device, as the 7B runs of docs/benchmarks.md."""
    print("plan statistics from the planner's cost model (cost in prefilled token-rows); not speed measurements")
    planner = Planner.for_model(cfg, batch_size=a.batch, bucket_step=a.bucket_step, param_bytes=2,
                                cache_bytes=jnp.dtype(a.cache_dtype).itemsize)
    records = []
    for new in a.new_tokens:
        n = a.n if new <= 16 or a.reasons_n is None else a.reasons_n
        lengths = [len(p) for p in prompts(n, a.min_len, a.max_len, a.seed, cfg.vocab_size)]
        old = planner.stats(lengths, fixed_plan(lengths, a.batch), reserve=new)
        plan = planner.plan(lengths, reserve=new)
        assert sorted(int(r) for b in plan for r in b) == list(range(n))
        now = planner.stats(lengths, plan, reserve=new)
        for name, st in (("fixed", old), ("length-aware", now)):
            rec = dict(bench="jlm", event="plan", preset=a.preset, n=n, batch=a.batch, new_tokens=new,
                       bucket_step=a.bucket_step, planner=name, padding=round(st["padding"], 4),
                       batches=st["batches"], shapes=st["shapes"], cost=round(st["cost"]),
                       cost_vs_fixed=round(st["cost"] / old["cost"], 4))
            if name == "length-aware":
                rec["rows"] = [int(planner.batch_bucket(len(b))) for b in plan]
            print(json.dumps(rec), flush=True)
            records.append(rec)
    print("\n| new tokens | n | batch | planner | padding | batches | program shapes | cost (token-rows) | vs fixed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in records:
        print(f"| {d['new_tokens']} | {d['n']} | {d['batch']} | {d['planner']} | {100 * d['padding']:.1f}% | "
              f"{d['batches']} | {d['shapes']} | {d['cost']} | {d['cost_vs_fixed']:.3f} |")


def build(cfg, dtype, attn):
    t = time.perf_counter()
    model = Llama(cfg, ModelOptions(dtype=dtype, attn_impl=attn), rngs=nnx.Rngs(0))
    jax.block_until_ready(nnx.state(model))
    return model, time.perf_counter() - t


def run(eng, ps, new, profile=False):
    """Judge every prompt (forced `new` tokens). With profile, sync after each phase and return
    per-batch (prompts, bucket length, prompt tokens, prefill s, decode s, device rows)."""
    no_stop = np.zeros(eng.cfg.vocab_size, bool)
    if not profile:
        t = time.perf_counter()
        eng.generate(ps, max_new=new, stop=no_stop, min_new=new)
        return time.perf_counter() - t, []
    rows_log, t0 = [], time.perf_counter()
    for rows in eng.planner.plan([len(p) for p in ps], reserve=new):  # generate's plan, so warmup compiled it
        t = time.perf_counter()
        batch = eng.prefill(ps, rows, reserve=new)
        jax.block_until_ready(batch.cache)
        t1 = time.perf_counter()
        eng.decode(batch, max_new=new, stop=no_stop, min_new=new)
        t2 = time.perf_counter()
        rows_log.append((len(rows), batch.index - new, int(sum(len(ps[r]) for r in rows)), t1 - t, t2 - t1,
                         len(batch.rows)))
        del batch
    return time.perf_counter() - t0, rows_log


def sweep(a, model, ps, new, emit):
    """Steady-state throughput on the first --sweep-n prompts for each --sweep-batch size."""
    sub = ps[: a.sweep_n]
    for b in a.sweep_batch:
        eng = Engine(model, mesh=default_mesh(), batch_size=b, bucket_step=a.bucket_step, cache_dtype=a.cache_dtype)
        eng.warmup([len(p) for p in sub], reserve=new, max_new=(new,))
        run(eng, sub, new)
        dt, _ = run(eng, sub, new)
        emit(dict(event="sweep_batch", n=len(sub), batch=b, new_tokens=new, seconds=round(dt, 3),
                  samples_per_s=round(len(sub) / dt, 2),
                  mean_len=round(sum(map(len, sub)) / len(sub))))
        del eng


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, nargs="+", default=[6], help="one or more runs, e.g. 6 128")
    ap.add_argument("--reasons-n", type=int, default=None, help="prompts for runs with > 16 new tokens (default --n)")
    ap.add_argument("--min-len", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bucket-step", type=int, default=64)
    ap.add_argument("--attn", default=None, help="xla | cudnn (default: cudnn on GPU, xla elsewhere)")
    ap.add_argument("--cache-dtype", default="bfloat16",
                    help="KV cache dtype, e.g. int8 (scaled): half the bytes each decode step reads")
    ap.add_argument("--sweep-batch", type=int, nargs="*", default=[], help="extra batch sizes to time")
    ap.add_argument("--sweep-n", type=int, default=128, help="prompts per batch-size sweep point")
    ap.add_argument("--sweep-only", action="store_true", help="only the batch-size sweep (scores only)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=None, help="append the JSON lines here too")
    ap.add_argument("--plan-only", action="store_true",
                    help="no model: batch-plan statistics of the old and the current planner (runs on any CPU)")
    a = ap.parse_args()

    cfg = SHAPES[a.preset]
    if a.plan_only:
        return plan_only(a, cfg)
    gpu = jax.default_backend() == "gpu"
    attn = a.attn or ("cudnn" if gpu else "xla")
    dtype = jnp.bfloat16
    model, t_init = build(cfg, dtype, attn)
    dev = jax.devices()[0]
    info = dict(bench="jlm", preset=a.preset, device=getattr(dev, "device_kind", str(dev)), n_devices=len(jax.devices()),
                jax=jax.__version__, attn=attn, bucket_step=a.bucket_step,
                cache_dtype=a.cache_dtype)
    print(json.dumps(dict(info, event="model", params=cfg.num_params, init_s=round(t_init, 1))), flush=True)
    lines = []

    def emit(d):
        d = dict(info, **d)
        lines.append(d)
        print(json.dumps(d), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(d) + "\n")

    flops_tok = 2 * cfg.num_params
    engine_kw = dict(mesh=default_mesh(), batch_size=a.batch, bucket_step=a.bucket_step, cache_dtype=a.cache_dtype)
    for new in a.new_tokens:
        n = a.n if new <= 16 or a.reasons_n is None else a.reasons_n
        ps = prompts(n, a.min_len, a.max_len, a.seed, cfg.vocab_size)
        if a.sweep_only:
            sweep(a, model, ps, new, emit)
            continue
        eng = Engine(model, **engine_kw)
        t = time.perf_counter()
        try:
            compiled = eng.warmup([len(p) for p in ps], reserve=new, max_new=(new,))
        except Exception as e:  # e.g. a cuDNN version without this attention shape: measure the xla path
            if model.attn_impl == "xla":
                raise
            print(f"attention {model.attn_impl!r} failed ({type(e).__name__}: {str(e)[:500]}); using xla",
                  file=sys.stderr, flush=True)
            model.attn_impl = info["attn"] = "xla"
            eng = Engine(model, **engine_kw)
            compiled = eng.warmup([len(p) for p in ps], reserve=new, max_new=(new,))
        t_compile = time.perf_counter() - t
        run(eng, ps[: a.batch], new)  # the peer's warm-up: one batch
        cold, _ = run(eng, ps, new)  # the peer's protocol; other buckets' programs run for the first time
        dt, _ = run(eng, ps, new)  # steady state: every program has run before
        tokens = sum(map(len, ps)) + n * new
        mean_len = sum(map(len, ps)) / n
        ceiling = PEAK_TFLOPS * 1e12 / (flops_tok * (mean_len + new))
        plan = eng.planner.stats([len(p) for p in ps], eng.planner.plan([len(p) for p in ps], reserve=new), reserve=new)
        rec = dict(event="run", n=n, batch=a.batch, new_tokens=new, prompt_tokens=sum(map(len, ps)),
                   plan_padding=round(plan["padding"], 4), plan_batches=plan["batches"], plan_shapes=plan["shapes"],
                   programs=compiled, compile_s=round(t_compile, 1), first_pass_s=round(cold, 3),
                   first_pass_samples_per_s=round(n / cold, 2), seconds=round(dt, 3),
                   samples_per_s=round(n / dt, 2), model_tflops=round(flops_tok * tokens / dt / 1e12, 1),
                   ceiling_samples_per_s=round(ceiling, 1))
        if not a.no_profile:
            dtp, log = run(eng, ps, new, profile=True)
            pre, dec = sum(r[3] for r in log), sum(r[4] for r in log)
            padded = sum(r[5] * r[1] for r in log)  # device rows: filler rows are padding too
            rec.update(profiled_s=round(dtp, 3), prefill_s=round(pre, 3), decode_s=round(dec, 3),
                       prefill_tflops=round(flops_tok * sum(r[2] for r in log) / pre / 1e12, 1),
                       padding_frac=round(1 - sum(r[2] for r in log) / max(padded, 1), 3),
                       decode_ms_per_step=round(1000 * dec / (len(log) * new), 2),
                       per_batch=[dict(rows=r[0], device_rows=r[5], bucket=r[1], mean_len=round(r[2] / r[0]),
                                       samples_per_s=round(r[0] / (r[3] + r[4]), 1),
                                       prefill_s=round(r[3], 3), decode_s=round(r[4], 3)) for r in log])
        emit(rec)
        del eng
        if new <= 16:
            sweep(a, model, ps, new, emit)

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(json.dumps(dict(info, event="memory", peak_gib=round(stats["peak_bytes_in_use"] / 2**30, 1))))
    print("\n| new tokens | n | batch | samples/s | model TFLOP/s | ceiling samples/s | prefill s | decode s | "
          "decode ms/step | padding |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in lines:
        if d["event"] == "run":
            print(f"| {d['new_tokens']} | {d['n']} | {d['batch']} | {d['samples_per_s']} | {d['model_tflops']} | "
                  f"{d['ceiling_samples_per_s']} | {d.get('prefill_s', '')} | {d.get('decode_s', '')} | "
                  f"{d.get('decode_ms_per_step', '')} | {d.get('padding_frac', '')} |")
    for d in lines:
        if d["event"] == "sweep_batch":
            print(f"| {d['new_tokens']} | {d['n']} | {d['batch']} (sweep) | {d['samples_per_s']} | | | | | | |")


if __name__ == "__main__":
    main()
