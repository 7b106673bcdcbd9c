"""Fine-tuning throughput and MFU of jlm's train step, side by side with the Hugging Face peer.

The work is the peer's (benchmarks/peers/hf_peer_train.py --preset 1b --batch 8 --seq 2048): a LLaMA of
the 1.26B shape with random weights, causal-LM loss over random tokens (mean over tokens), AdamW
(lr 2e-5, no weight decay) with clipping at 1.0, bf16 compute over fp32 master weights. MFU uses
the peer's formula (6 x params x tokens + causal attention) over the bf16 dense peak (989 TFLOP/s
on H100/H200), so the ratio is like for like.

    # on the GPU machine, both in one call:
    PYTHONPATH=. python3 scripts/bench_train.py --peer benchmarks/peers/hf_peer_train.py \
        --remat none+scan none dots_with_no_batch_dims_saveable --out $OUT/bench_train.json
    # CPU smoke test of the script itself:
    python scripts/bench_train.py --shape tiny --batch 2 --seq 128 --steps 2 --warmup 1 --remat none

Each jlm variant (a remat policy, "+scan" for scan-over-layers) runs in its own process, so an
out-of-memory variant cannot take the others down and each peak-memory figure is its own; each
prints STAGE lines as it goes, so a variant that runs out of time still says where it was.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# XLA GPU flags from MaxText's / JAX-Toolbox's GPU recipes that matter on one GPU: cuBLAS for every
# GEMM (no Triton GEMM autotuning: faster compiles, same speed on large bf16 matmuls), and no HLO
# rematerialization pass (it searches for minutes on a large unrolled graph near the memory limit;
# remat is chosen explicitly by policy instead). The latency-hiding scheduler only pays with
# collectives to overlap, i.e. on several GPUs. Set before JAX is imported.
GPU_XLA_FLAGS = "--xla_gpu_enable_triton_gemm=false --xla_disable_hlo_passes=rematerialization"


def worker(a) -> None:
    """One variant in this process: prints one JSON line."""
    import jax
    import numpy as np

    from jlm.model.config import MODEL_SHAPES, LlamaConfig
    from jlm.train.config import TrainConfig
    from jlm.train.monitor import peak_tflops, step_flops
    from jlm.train.optim import lr_schedule, make_optimizer
    from jlm.train.state import init_state, make_setup, resolve_attn_impl
    from jlm.train.step import make_train_step, shard_batch

    if a.shape == "tiny":
        mcfg = LlamaConfig(vocab_size=32000, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                           num_kv_heads=4, head_dim=32)
    else:
        mcfg = MODEL_SHAPES[a.shape]
    variant = a.remat[0]  # a worker runs one variant: POLICY or POLICY+scan
    policy, _, extra = variant.partition("+")
    scan = a.scan_layers or extra == "scan"
    remat = None if policy == "none" else policy
    t_start = time.perf_counter()

    def stage(msg):  # progress on stdout, so that a timed-out worker still says where it was
        print(f"STAGE {time.perf_counter() - t_start:7.1f}s {msg}", flush=True)

    stage(f"start {variant} on {jax.devices()[0].device_kind}, jax {jax.__version__}")
    cfg = TrainConfig(init="random", precision=a.precision, remat=remat, scan_layers=scan,
                      attn_impl=a.attn_impl, global_batch=a.batch, micro_batch=a.batch, weighting="token",
                      lr=2e-5, warmup_ratio=0.0, weight_decay=0.0, clip_norm=1.0, seq_len=a.seq,
                      max_steps=a.warmup + a.steps, mesh_fsdp=-1)
    total = a.warmup + a.steps
    t0 = time.perf_counter()
    setup = make_setup(cfg, mcfg, make_optimizer(cfg, total))
    state = init_state(setup)
    jax.block_until_ready(state)
    t_init = time.perf_counter() - t0
    stage("state initialised")

    # the peer's data: uniform random ids in [100, 31000), labels = the ids (HF shifts inside the loss)
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 31000, (a.batch, a.seq)).astype(np.int32)
    targets = np.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    loss_mask = np.ones(ids.shape, np.float32)
    loss_mask[:, -1] = 0.0  # the last position has no next token (HF's shift)
    batch = shard_batch(setup, {"input_ids": ids, "targets": targets, "loss_mask": loss_mask,
                                "positions": np.broadcast_to(np.arange(a.seq, dtype=np.int32), ids.shape)})

    step = make_train_step(setup, lr_schedule(cfg, total))
    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        lowered = step.jitted.lower(state, batch)
        stage("lowered")
        compiled = lowered.compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    stage(f"compiled; temp {mem.temp_size_in_bytes / 2**30 if mem else -1:.1f} GiB")

    for _ in range(a.warmup):
        state, m = compiled(state, batch)
    jax.block_until_ready((state, m))
    stage("warmed up")
    losses = []
    t0 = time.perf_counter()
    for _ in range(a.steps):
        state, m = compiled(state, batch)
        losses.append(m["loss"])
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - t0) / a.steps

    dev = jax.devices()[0]
    peak = a.peak_tflops or peak_tflops(dev.device_kind)
    flops = step_flops(mcfg, a.batch, a.seq)
    stats = dev.memory_stats() or {}
    out = dict(impl="jlm", shape=a.shape, params=mcfg.num_params, batch=a.batch, seq=a.seq,
               remat=policy, attn_impl=resolve_attn_impl(cfg), precision=a.precision,
               scan_layers=scan, step_s=round(dt, 4), tokens_per_s=round(a.batch * a.seq / dt),
               mfu=round(flops / dt / 1e12 / peak, 3) if peak else None,
               loss_first=round(float(losses[0]), 4), loss_last=round(float(losses[-1]), 4),
               compile_s=round(t_compile, 1), init_s=round(t_init, 1),
               temp_gib=round(mem.temp_size_in_bytes / 2**30, 2) if mem else None,
               peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 2) or None,
               device=dev.device_kind, jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    print("RESULT " + json.dumps(out), flush=True)


def check_cudnn(a) -> None:
    """On the GPU: the cuDNN causal path (plain and packed segments) against the XLA path, bf16."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jlm.model.config import LlamaConfig
    from jlm.model.llama import Llama, ModelOptions

    if jax.default_backend() != "gpu":
        print("CHECK " + json.dumps({"skipped": f"no GPU ({jax.default_backend()})"}), flush=True)
        return
    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=64)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(3, 1000, (2, 256)), jnp.int32)
    seg = jnp.asarray(np.array([[1] * 100 + [2] * 120 + [0] * 36, [1] * 256]), jnp.int32)
    res = {}
    for name, kw in (("plain", {}), ("packed", {"segment_ids": seg})):
        logits = {}
        for impl in ("xla", "cudnn"):
            model = Llama(cfg, ModelOptions(dtype=jnp.bfloat16, param_dtype=jnp.float32, attn_impl=impl), rngs=nnx.Rngs(0))
            graphdef, state = nnx.split(model)
            fwd = jax.jit(lambda s, x, g=graphdef, kw=kw: nnx.merge(g, s)(x, **kw).logits)
            logits[impl] = np.asarray(fwd(state, ids))
        real = np.ones(ids.shape, bool) if name == "plain" else np.asarray(seg > 0)
        diff = np.abs(logits["xla"] - logits["cudnn"])[real]
        res[name] = dict(max_abs=float(diff.max()), ref_max=float(np.abs(logits["xla"][real]).max()))
    print("CHECK " + json.dumps(res), flush=True)


def run(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        rc, text = 124, out.decode(errors="replace") if isinstance(out, bytes) else out
    print(f"# {' '.join(cmd[-8:])}: rc={rc} in {time.perf_counter() - t0:.0f}s", flush=True)
    return rc, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-1b", help="a jlm.model.config.MODEL_SHAPES shape, or 'tiny' (CPU smoke test)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--remat", nargs="+", default=["none+scan", "none"],
                    help="variants, one process each: a remat policy ('none' keeps every activation), "
                         "optionally '+scan' for scan-over-layers")
    ap.add_argument("--precision", default="mixed")
    ap.add_argument("--attn-impl", default="auto")
    ap.add_argument("--scan-layers", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--peer", help="path to hf_peer_train.py: run it too (remat and no remat)")
    ap.add_argument("--peer-modes", nargs="+", default=["remat", "no-remat"])
    ap.add_argument("--xla-flags", default=GPU_XLA_FLAGS, help="XLA flags added on GPU shapes")
    ap.add_argument("--check", action="store_true", help="first compare the cuDNN and XLA attention paths")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per process")
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--worker", choices=["step", "check"], help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker == "step":
        worker(a)
        return 0
    if a.worker == "check":
        check_cudnn(a)
        return 0

    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_MEM_FRACTION="0.92")
    if a.xla_flags and a.shape != "tiny":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + a.xla_flags).strip()
    results, log = [], []
    me = [sys.executable, os.path.abspath(__file__)]
    common = ["--shape", a.shape, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
              "--warmup", str(a.warmup), "--precision", a.precision, "--attn-impl", a.attn_impl]
    if a.scan_layers:
        common.append("--scan-layers")
    if a.peak_tflops:
        common += ["--peak-tflops", str(a.peak_tflops)]
    def save():  # after every process, so that a killed run still leaves what it measured
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, f, indent=1)

    if a.check:
        rc, text = run(me + ["--worker", "check"], env, a.timeout)
        log.append(text)
        results += [{"check": json.loads(l[6:])} for l in text.splitlines() if l.startswith("CHECK ")]
        if rc:
            print(text[-3000:])
    if a.peer:
        for mode in a.peer_modes:
            cmd = ["python3", a.peer, "--preset", "1b" if a.shape == "llama-1b" else a.shape, "--batch", str(a.batch),
                   "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup)]
            if mode == "no-remat":
                cmd.append("--no-remat")
            rc, text = run(cmd, dict(os.environ, PYTHONUNBUFFERED="1"), a.timeout)
            lines = [l for l in text.splitlines() if l.startswith("{")]
            results.append(json.loads(lines[-1]) if lines else {"peer": mode, "error": text[-1500:]})
            save()

    for remat in a.remat:
        rc, text = run(me + ["--worker", "step", "--remat", remat] + common, env, a.timeout)
        if rc and "Unknown flag" in text and "XLA_FLAGS" in env:  # an XLA without one of our flags
            env.pop("XLA_FLAGS")
            rc, text = run(me + ["--worker", "step", "--remat", remat] + common, env, a.timeout)
        log.append(text)
        got = [json.loads(l[7:]) for l in text.splitlines() if l.startswith("RESULT ")]
        results += got or [{"impl": "jlm", "remat": remat, "error": text[-1500:]}]
        print("\n".join(l for l in text.splitlines() if l.startswith("STAGE ")), flush=True)
        if not got:
            print(text[-3000:], flush=True)
        save()
    print("\n| impl | remat | step s | tokens/s | MFU | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "check" in r:
            continue
        name = r.get("impl") or r.get("peer")
        remat = f"{r.get('remat')}{' +scan' if r.get('scan_layers') else ''}"
        print(f"| {name} | {remat} | {r.get('step_s')} | {r.get('tokens_per_s')} | {r.get('mfu')} | "
              f"{r.get('compile_s', '')} | {r.get('peak_gib', '')} |" if "error" not in r else f"| {name} | "
              f"{r.get('remat', r.get('peer'))} | error | | | | |")
    for r in results:
        if "check" in r:
            print("cuDNN vs XLA attention (bf16 logits):", json.dumps(r["check"]))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
