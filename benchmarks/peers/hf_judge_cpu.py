"""The peer for CPU judging: Hugging Face transformers + torch on the same GGUF, the same prompts.

Reads prompts (JSONL, {"id": ..., "prompt": ...}: full JudgeLM prompt texts), writes each score line
greedily (stopping at the first newline, at most --max-new tokens), one prompt at a time, and prints
one JSON line: model load seconds, judging seconds, prompt tokens, peak RSS, and every output text.
Run by scripts/bench_judge_cpu.py in its own interpreter (torch is no dependency of jlm):

    python benchmarks/peers/hf_judge_cpu.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --prompts p.jsonl --threads 2

`--adapter DIR` merges a PEFT LoRA adapter (jlm's smollm2-judge) into the model after loading.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList


def peak_rss_gb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss, which on Linux also holds the peak of the
    process that started this one (its mm before exec)."""
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1e6


class StopAtNewline(StoppingCriteria):
    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids, scores, **kw):
        return "\n" in self.tokenizer.decode(input_ids[0, self.start:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=8, help="score-line token cap (jlm's budget for two scores)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter directory, merged in after loading (peft)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    prompts = [json.loads(line) for line in a.prompts.read_text().splitlines() if line.strip()]

    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name)
    model = AutoModelForCausalLM.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name, dtype=getattr(torch, a.dtype),
                                                 attn_implementation="sdpa").eval()
    if a.adapter:  # merged, as jlm merges an adapter when it loads one
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, a.adapter).merge_and_unload().eval()
    load_s = time.perf_counter() - t

    texts, prompt_tokens = [], 0
    t = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p["prompt"], return_tensors="pt")["input_ids"]
            prompt_tokens += ids.shape[1]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.max_new, do_sample=False,
                                 stopping_criteria=StoppingCriteriaList([StopAtNewline(tok, ids.shape[1])]),
                                 pad_token_id=tok.eos_token_id)
            texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip())
    judge_s = time.perf_counter() - t
    print(json.dumps({"system": f"transformers+torch {torch.__version__} {a.dtype} sdpa", "batch": 1,
                      "load_s": load_s, "judge_s": judge_s, "prompts": len(prompts), "prompt_tokens": prompt_tokens,
                      "peak_rss_gb": peak_rss_gb(),
                      "texts": dict(zip([p["id"] for p in prompts], texts))}))


if __name__ == "__main__":
    main()
