"""Make the logits-parity fixtures with Hugging Face transformers (the independent implementation).

Not run by CI and not a test dependency: run it by hand in an environment with torch and
transformers, and commit what it writes under tests/fixtures/:

    python scripts/make_parity_fixtures.py [--smollm2 PATH.gguf]

1. Tiny random `LlamaForCausalLM` variants (MHA; GQA with 2 and 1 kv heads; rope theta 5e5;
   linear rope scaling; tied embeddings), saved the ways real checkpoints come (sharded PyTorch
   .bin as the released JudgeLM checkpoints, safetensors single and sharded) and with the three
   config.json dialects, plus fp32 eager-attention logits on a 2 x 300 batch whose second row is
   left-padded, and every layer's hidden states on it (`--hidden-states-only` adds those to
   existing fixtures, computed from their saved weights, which stay as they are).
2. SmolLM2-135M-Instruct through transformers' own GGUF loader: the token ids of a JudgeLM judge
   prompt (300+ tokens) and the logits at a few positions, the next-token log-probs and argmax
   everywhere.
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
T, PAD = 300, 37

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2)
VARIANTS = {
    # name: (config overrides, how to save, config dialect)
    "mha": (dict(num_key_value_heads=4), "bin_sharded", "4.28"),
    "gqa2_theta": (dict(num_key_value_heads=2, rope_theta=5e5, rms_norm_eps=1e-5), "safetensors_sharded", "4.4x"),
    "mqa": (dict(num_key_value_heads=1), "safetensors", "5.x"),
    "rope_linear": (dict(num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}), "safetensors", "4.4x"),
    "tied": (dict(num_key_value_heads=2, tie_word_embeddings=True), "safetensors", "5.x"),
}


def rewrite_dialect(cfg_path: Path, dialect: str, theta: float, scaling):
    """transformers 5 writes `rope_parameters`; rewrite into the older dialects we must also read."""
    raw = json.loads(cfg_path.read_text())
    raw.pop("rope_parameters", None)
    raw.pop("rope_theta", None)
    raw.pop("rope_scaling", None)
    if dialect == "4.28":
        assert theta == 10000.0 and scaling is None  # 4.28 had no rope_theta: 1e4 is implied
        raw["rope_scaling"] = None
    elif dialect == "4.4x":
        raw["rope_theta"] = theta
        raw["rope_scaling"] = scaling
    else:
        raw["rope_parameters"] = {"rope_type": (scaling or {}).get("rope_type", "default"), "rope_theta": theta,
                                  **({"factor": scaling["factor"]} if scaling else {})}
    cfg_path.write_text(json.dumps(raw, indent=2))


def random_llama(cfg: LlamaConfig) -> LlamaForCausalLM:
    """An fp32 eager-attention LLaMA with random weights, norms included (all-ones norm weights
    hide layout bugs), drawn from torch's current seed."""
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def save_bin_sharded(model, d: Path, shards: int = 2):
    """pytorch_model-0000k-of-0000n.bin shards (torch.save zip pickles) + their index."""
    d.mkdir(parents=True)
    model.config.save_pretrained(d)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = list(sd)
    weight_map = {}
    for k in range(shards):
        fname = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[k::shards]}
        torch.save(part, d / fname)
        weight_map.update({n: fname for n in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def tiny_fixtures():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, BASE["vocab_size"], size=(2, T))
    mask = np.ones((2, T), np.int64)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    for name, (over, save, dialect) in VARIANTS.items():
        torch.manual_seed(hash(name) % 1000)
        kw = {**BASE, **over}
        scaling = kw.pop("rope_scaling", None)
        theta = kw.pop("rope_theta", 10000.0)
        cfg = LlamaConfig(**kw, rope_parameters={"rope_type": (scaling or {}).get("rope_type", "default"),
                                                 "rope_theta": theta,
                                                 **({"factor": scaling["factor"]} if scaling else {})})
        model = random_llama(cfg)
        d = OUT / f"tiny_{name}"
        shutil.rmtree(d, ignore_errors=True)
        if save == "bin_sharded":  # JudgeLM's layout; transformers 5 only writes safetensors
            save_bin_sharded(model, d)
        elif save == "safetensors_sharded":
            model.save_pretrained(d, max_shard_size="200KB")
        else:
            model.save_pretrained(d)
        for extra in ("generation_config.json",):
            (d / extra).unlink(missing_ok=True)
        rewrite_dialect(d / "config.json", dialect, theta, scaling)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        np.savez(d / "logits.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                 logits=logits.astype(np.float32))
        add_hidden_states(d)
        print(name, save, dialect, sorted(os.listdir(d)))


def add_hidden_states(d: Path):
    """Add HF's hidden states (the embeddings, then each layer's output, the last one after the final
    norm) on the fixture's inputs to d/logits.npz, from the checkpoint saved in d; the stored logits
    are checked to come out again."""
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    ref = dict(np.load(d / "logits.npz"))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ref["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(ref["attention_mask"], dtype=torch.long), output_hidden_states=True)
    real = ref["attention_mask"].astype(bool)
    diff = np.abs(out.logits.numpy()[real] - ref["logits"][real]).max()
    assert diff < 1e-5, f"{d}: the saved checkpoint gives other logits ({diff:.1e})"
    ref["hidden_states"] = np.stack([h.numpy() for h in out.hidden_states]).astype(np.float32)  # [L+1, B, T, D]
    np.savez(d / "logits.npz", **ref)


def judge_prompt() -> str:
    """A JudgeLM pairwise prompt (jlm/formats/prompts.py's format), 300+ tokens."""
    system = "You are a helpful and precise assistant for checking the quality of the answer."
    prompt = ("We would like to request your feedback on the performance of two AI assistants in response to the user "
              "question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their "
              "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
              "better overall performance.\nPlease first output a single line containing only two values indicating the "
              "scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent "
              "line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
              "ensuring that the order in which the responses were presented does not affect your judgment.")
    question = "Explain why the sky is blue, in two or three sentences, for a curious ten-year-old."
    a1 = ("Sunlight looks white but is made of all the colours of the rainbow. When it enters the air, the tiny gas "
          "molecules scatter the short blue waves much more than the long red ones, so blue light bounces all over "
          "the sky and reaches your eyes from every direction. That is why the sky looks blue on a clear day!")
    a2 = "The sky is blue because it reflects the ocean, which is blue.  It's   simple:\tthe water colours the air 😀."
    return (f"{system}\n[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{a1}\n\n"
            f"[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{a2}\n\n"
            f"[The End of Assistant 2's Answer]\n\n[System]\n{prompt}\n\n### Response:")


def smollm2_fixture(gguf: Path):
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    text = judge_prompt()
    ids = tok(text)["input_ids"]
    assert len(ids) >= 256, len(ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nxt = np.asarray(ids[1:] + [ids[-1]])
    rows = np.array([0, 1, 63, 127, 255, len(ids) - 2, len(ids) - 1])
    np.savez_compressed(OUT / "smollm2_judge_prompt.npz", input_ids=np.asarray(ids, np.int32),
                        rows=rows, row_logits=logits[rows].astype(np.float32),
                        next_logprob=logp[np.arange(len(ids)), nxt].astype(np.float32),
                        argmax=logits.argmax(-1).astype(np.int32))
    (OUT / "smollm2_judge_prompt.txt").write_text(text)
    print("smollm2", len(ids), "tokens; last-position top-5:", np.argsort(-logits[-1])[:5])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", type=Path, default=None, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--hidden-states-only", action="store_true",
                    help="only add hidden states to the existing tiny fixtures (their weights unchanged)")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.hidden_states_only:
        for name in VARIANTS:
            add_hidden_states(OUT / f"tiny_{name}")
            print(name, "hidden states added")
        return
    tiny_fixtures()
    if a.smollm2:
        smollm2_fixture(a.smollm2)


if __name__ == "__main__":
    main()
