"""jlm: fine-tuned LLM judges (JudgeLM) in JAX/Flax.

    model, cfg = jlm.load_model("path/to/JudgeLM-7B-v1.0", dtype=jnp.bfloat16)
    tok = jlm.load_tokenizer("path/to/JudgeLM-7B-v1.0")
    judge = jlm.Judge.load("smollm2")
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "Judge", "LlamaConfig", "ModelOptions"]


def __getattr__(name):  # lazy: `import jlm` stays cheap for the CLI and the formats/metrics code
    if name == "load_model":
        from jlm.model.load import load_model
        return load_model
    if name == "load_tokenizer":
        from jlm.tokenizer import load_tokenizer
        return load_tokenizer
    if name == "Judge":
        from jlm.infer.judge import Judge
        return Judge
    if name == "LlamaConfig":
        from jlm.model.config import LlamaConfig
        return LlamaConfig
    if name == "ModelOptions":
        from jlm.model.options import ModelOptions
        return ModelOptions
    raise AttributeError(f"module 'jlm' has no attribute {name!r}")
