"""Model configuration: one frozen dataclass, read from a checkpoint's config.

Hugging Face writes `config.json` in three dialects (see docs/checkpoints.md): transformers
4.28 (no `rope_theta`: 10000), 4.3x-4.4x (`rope_theta`, `rope_scaling`), and 5.x (`rope_parameters`).
`LlamaConfig.from_hf` reads all three; anything it does not understand is an error, never a
silent default.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class ConfigError(ValueError):
    """A checkpoint config we cannot honour exactly."""


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # linear RoPE scaling: positions are divided by this
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")

    @property
    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + d

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    # ----------------------------------------------------------------------------------- HF I/O
    @classmethod
    def from_hf(cls, raw: Mapping[str, Any], source: str = "config.json") -> "LlamaConfig":
        """Build from a Hugging Face `config.json` dict (any of the three dialects)."""
        model_type = raw.get("model_type", "llama")
        archs = raw.get("architectures") or ["LlamaForCausalLM"]
        if model_type not in ("llama",) or not any(a.startswith("Llama") for a in archs):
            raise ConfigError(f"{source}: model_type={model_type!r} architectures={archs} is not a LLaMA model")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in raw:
                raise ConfigError(f"{source}: missing required field {key!r}")
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act={raw['hidden_act']!r} is not supported (LLaMA uses silu)")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise ConfigError(f"{source}: attention_bias/mlp_bias are not supported")

        heads = int(raw["num_attention_heads"])
        theta, factor = _rope(raw, source)
        eos = raw.get("eos_token_id", 2)
        if isinstance(eos, list):  # some configs list several EOS ids; the first is the canonical one
            eos = eos[0] if eos else None
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling_factor=factor,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=raw.get("bos_token_id", 1),
            eos_token_id=eos,
            pad_token_id=raw.get("pad_token_id"),
        )

    def to_hf(self, dtype: str = "bfloat16") -> dict:
        """A transformers 4.4x-dialect `config.json` dict (read by 4.x and 5.x alike)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling_factor == 1.0
            else {"rope_type": "linear", "factor": self.rope_scaling_factor},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": dtype,
        }


def _rope(raw: Mapping[str, Any], source: str) -> tuple[float, float]:
    """(theta, linear factor) from whichever dialect the config speaks."""
    params = raw.get("rope_parameters")
    if params is not None:  # transformers 5.x
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = params
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = raw.get("rope_scaling")
    if not scaling:
        return float(theta), 1.0
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), 1.0
    if kind == "linear":
        factor = float(scaling["factor"])
        if factor <= 0:
            raise ConfigError(f"{source}: rope_scaling factor must be positive, got {factor}")
        return float(theta), factor
    raise ConfigError(f"{source}: rope_scaling type {kind!r} is not supported (supported: default, linear)")


# Shapes of the released JudgeLM checkpoints (LLaMA-1 / Vicuna v1.3), for random-weight benchmarks
# and memory plans. Real checkpoints always use the config they ship with.
_LLAMA1 = dict(vocab_size=32000, rms_norm_eps=1e-6, max_position_embeddings=2048, pad_token_id=0)
MODEL_SHAPES: dict[str, LlamaConfig] = {
    "judgelm-7b": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                              num_kv_heads=32, head_dim=128, **_LLAMA1),
    "judgelm-13b": LlamaConfig(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                               num_kv_heads=40, head_dim=128, **_LLAMA1),
    "judgelm-33b": LlamaConfig(hidden_size=6656, intermediate_size=17920, num_layers=60, num_heads=52,
                               num_kv_heads=52, head_dim=128, **_LLAMA1),
    # the peer training benchmark's 1.26B shape (benchmarks/peers/hf_peer_train.py --preset 1b)
    "llama-1b": LlamaConfig(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                            num_kv_heads=32, head_dim=64, **_LLAMA1),
}
