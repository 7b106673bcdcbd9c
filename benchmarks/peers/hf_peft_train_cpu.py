"""Peer for CPU fine-tuning throughput: Hugging Face transformers + peft LoRA on torch's CPU build.

Trains LoRA adapters on the examples jlm's benchmark writes (`scripts/bench_train_cpu.py`: token ids
and loss masks of real judge examples), one example per micro-batch (no padding), the usual torch
recipe: fp32 weights, optional bf16 autocast, AdamW, optional gradient checkpointing. The model is
the same GGUF jlm loads, read by transformers (`from_pretrained(dir, gguf_file=...)`). Prints one
JSON line: tokens/s (all tokens), target tokens/s (tokens with a loss), step time, peak RSS.

    python hf_peft_train_cpu.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --examples ex.npz \
        --rank 16 --alpha 32 --threads 2 --steps 4 --warmup 1 --accum 4 [--bf16] [--remat]

Not a jlm dependency: run it in its own environment (torch, transformers, peft, gguf).
"""
import argparse
import json
import os
import time

import numpy as np


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss, which on Linux also holds the peak of the
    process that started this one (its mm before exec)."""
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--examples", required=True, help="npz from bench_train_cpu.py: ids_<i>, mask_<i>")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--accum", type=int, default=4, help="examples (micro-batches of one) per step")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast over fp32 weights")
    ap.add_argument("--remat", action="store_true", help="gradient checkpointing")
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.gguf)),
                                                 gguf_file=os.path.basename(a.gguf), torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    load_s = time.perf_counter() - t0
    if a.remat:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)

    data = np.load(a.examples)
    n = len([k for k in data.files if k.startswith("ids_")])
    examples = []
    for i in range(n):
        ids = torch.from_numpy(data[f"ids_{i}"].astype(np.int64))[None]
        mask = data[f"mask_{i}"]  # mask[t]: target t (= ids[t + 1]) carries a loss
        labels = torch.full_like(ids, -100)
        on = np.nonzero(mask[:-1] > 0)[0] + 1
        labels[0, on] = ids[0, on]
        examples.append((ids, labels, int(ids.shape[1]), int((mask > 0).sum())))

    cursor = [0]

    def step():
        tokens = targets = 0
        for _ in range(a.accum):
            ids, labels, n_tok, n_tgt = examples[cursor[0] % len(examples)]
            cursor[0] += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                loss = model(input_ids=ids, labels=labels).loss / a.accum
            loss.backward()
            tokens += n_tok
            targets += n_tgt
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return tokens, targets

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    tokens = targets = 0
    for _ in range(a.steps):
        k, g = step()
        tokens, targets = tokens + k, targets + g
    dt = time.perf_counter() - t
    print(json.dumps(dict(
        system="hf-transformers+peft", torch=torch.__version__, transformers=transformers.__version__,
        threads=a.threads, bf16=a.bf16, remat=a.remat, rank=a.rank, accum=a.accum, steps=a.steps,
        load_s=round(load_s, 1), step_s=round(dt / a.steps, 2), tokens_per_s=round(tokens / dt, 1),
        target_tokens_per_s=round(targets / dt, 1),
        peak_rss_gb=round(peak_rss_gb(), 2))), flush=True)


if __name__ == "__main__":
    main()
