"""Peer for fine-tuning throughput: Hugging Face transformers + torch on the work of scripts/bench_train.py.

What it measures: seconds per optimizer step, tokens/s and model FLOPs utilisation of full
fine-tuning a LLaMA of the chosen shape with random weights, the usual torch recipe: fp32 master
weights under bf16 autocast, SDPA attention, causal-LM loss on random token ids in [100, 31000)
(labels = inputs; transformers shifts them), gradient clipping at 1.0, AdamW (lr 2e-5, no weight
decay), and gradient checkpointing unless --no-remat. --steps steps are timed after --warmup.
MFU = (6 x params x tokens + causal attention 12 x layers x hidden x seq x tokens / 2) per step
over --peak-tflops (dense bf16: 989 on H100/H200), the formula jlm.train.monitor.step_flops uses.

Run on the GPU machine; scripts/bench_train.py runs it beside jlm's variants in one call:

    python3 benchmarks/peers/hf_peer_train.py --preset 1b --batch 8 --seq 2048 --steps 10
    PYTHONPATH=. python3 scripts/bench_train.py --peer benchmarks/peers/hf_peer_train.py ...
    python3 benchmarks/peers/hf_peer_train.py --preset tiny --batch 2 --seq 128 --steps 2 --device cpu  # smoke

Prints one JSON line: {"peer": "hf-transformers+torch", "preset", "params", "batch", "seq",
"step_s", "tokens_per_s", "mfu", "remat", "torch"}. Needs torch and transformers, not jlm.
"""
import argparse
import json
import time

PRESETS = {  # vocabulary 32000; "1b" is jlm's "llama-1b", "tiny" bench_train.py's --shape tiny
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32),
    "3b": dict(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    ap.add_argument("--no-remat", action="store_true", help="keep activations (no gradient checkpointing)")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cuda = a.device.startswith("cuda")
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=a.seq, attn_implementation="sdpa",
                      use_cache=False, **PRESETS[a.preset])
    with torch.device(a.device):
        model = LlamaForCausalLM(cfg)  # fp32 master weights
    if not a.no_remat:  # renamed activation_checkpointing_enable in later transformers 5.x
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0, fused=cuda)
    ids = torch.randint(100, 31000, (a.batch, a.seq), device=a.device)

    def step():
        with torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / a.steps

    params = sum(p.numel() for p in model.parameters())
    tokens = a.batch * a.seq
    flops = 6 * params * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * a.seq * tokens / 2
    print(json.dumps(dict(peer="hf-transformers+torch", preset=a.preset, params=params, batch=a.batch, seq=a.seq,
                          step_s=round(dt, 3), tokens_per_s=round(tokens / dt),
                          mfu=round(flops / dt / 1e12 / a.peak_tflops, 3), remat=not a.no_remat,
                          torch=torch.__version__)))


if __name__ == "__main__":
    main()
