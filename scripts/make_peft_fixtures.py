"""Make the PEFT LoRA adapter fixture with transformers + peft (the independent implementation).

Not run by CI and not a test dependency: run it by hand in an environment with torch, transformers
and peft, and commit what it writes under tests/fixtures/tiny_lora/:

    python scripts/make_peft_fixtures.py

A tiny random `LlamaForCausalLM` (GQA, random norms), saved as safetensors in `base/`, wrapped by
peft's LoRA on all seven projections with random non-zero A and B and lora_alpha != r (so a wrong
scale shows), saved by peft's own `save_pretrained` in `adapter/` with base_model_name_or_path
"../base" (jlm reads a relative base path relative to the adapter directory), and the adapted
model's fp32 eager-attention logits on a 2 x 272 batch whose second row is left-padded (RoPE bugs
hide at short lengths).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig

from make_parity_fixtures import random_llama  # same directory: python puts it on sys.path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_lora"
T, PAD = 272, 29
# smaller than make_parity_fixtures.py's models so that base + adapter + logits stay ~0.5 MB
BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
RANK, ALPHA = 4, 12
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    torch.manual_seed(0)
    model = random_llama(LlamaConfig(**BASE))
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT / "base")
    (OUT / "base" / "generation_config.json").unlink(missing_ok=True)

    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                  target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():  # peft starts B at zero (a no-op adapter): make both factors matter
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn_like(p))
    peft_model.eval()
    peft_model.save_pretrained(OUT / "adapter")
    conf_path = OUT / "adapter" / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["base_model_name_or_path"] = "../base"
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)  # peft's model-card template

    rng = np.random.default_rng(1)
    ids = rng.integers(3, BASE["vocab_size"], size=(2, T))
    mask = np.ones((2, T), np.int64)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    with torch.no_grad():
        logits = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        with peft_model.disable_adapter():
            base_logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    print("adapter moves the logits by", float(np.abs(logits - base_logits)[real].max()))
    np.savez(OUT / "logits.npz", input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
             logits=logits.astype(np.float32))
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p.relative_to(OUT), p.stat().st_size)


if __name__ == "__main__":
    main()
