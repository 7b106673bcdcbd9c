"""Peer for judge throughput: Hugging Face transformers `generate` on the work of scripts/bench_judge.py.

What it measures: end-to-end samples/s of greedy judging with a LLaMA of the chosen shape and
random bf16 weights (speed does not depend on the weight values). N prompts of random token ids
whose lengths are uniform in [--min-len, --max-len), drawn with numpy's default_rng(--seed) exactly
as `scripts/bench_judge.py` draws them; batches of --batch prompts in the given order, left-padded;
exactly --new-tokens new tokens per prompt (6 ~ the score line only, 128 ~ a short reason). One
batch is run first as warm-up, then every prompt is timed.

Run it on the GPU machine in the same call as jlm's benchmark, with the same --preset/--n/
--min-len/--max-len/--seed, so that the ratio is taken on one machine:

    python3 benchmarks/peers/hf_peer_judge.py --preset 7b --n 512 --batch 64 --new-tokens 6
    python3 benchmarks/peers/hf_peer_judge.py --preset 7b --n 32 --batch 1 --new-tokens 6  # one at a time
    python3 benchmarks/peers/hf_peer_judge.py --preset tiny --n 8 --batch 4 --device cpu     # smoke test

Prints one JSON line: {"peer": "hf-transformers", "preset", "n", "batch", "new_tokens",
"prompt_tokens", "seconds", "samples_per_s", "torch"}. Needs torch and transformers, not jlm.
"""
import argparse
import json
import time

import numpy as np

# LLaMA-1 shapes of the released JudgeLM checkpoints (jlm.model.config.MODEL_SHAPES), vocabulary 32000
PRESETS = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}


def prompts(n, lo, hi, seed, vocab):
    """N lists of token ids, lengths uniform in [lo, hi); the same draws as scripts/bench_judge.py."""
    rng = np.random.default_rng(seed)
    return [rng.integers(100, vocab - 100, size=int(length)).tolist() for length in rng.integers(lo, hi, size=n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="7b", choices=sorted(PRESETS))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=6)
    ap.add_argument("--min-len", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, **PRESETS[a.preset])
    with torch.device(a.device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ps = prompts(a.n, a.min_len, a.max_len, a.seed, cfg.vocab_size)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def judge(items):
        for i in range(0, len(items), a.batch):
            chunk = items[i:i + a.batch]
            width = max(map(len, chunk))
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(chunk):  # left padding: every row's last prompt token is at the end
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            model.generate(input_ids=ids.to(a.device), attention_mask=mask.to(a.device), do_sample=False,
                           max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, pad_token_id=0)
        sync()

    judge(ps[:a.batch])  # warm-up: one batch
    t = time.perf_counter()
    judge(ps)
    dt = time.perf_counter() - t
    print(json.dumps(dict(peer="hf-transformers", preset=a.preset, n=a.n, batch=a.batch, new_tokens=a.new_tokens,
                          prompt_tokens=int(sum(map(len, ps))), seconds=round(dt, 2),
                          samples_per_s=round(a.n / dt, 2), torch=torch.__version__)))


if __name__ == "__main__":
    main()
