"""Sharded fine-tuning of judges (JudgeLM's recipe by default).

    config.py      TrainConfig, presets (judgelm-7b/13b/33b, smollm2-135m), YAML/JSON files
    state.py       mesh, model split into trainable/frozen weight dicts, TrainState, shardings, init/load
    optim.py       AdamW + global-norm clipping, HF-compatible warmup + cosine schedule
    loss.py        masked CE with per-sample (JudgeLM) or per-token weighting as numerator/denominator
    step.py        the jitted train step with gradient accumulation; host batch -> sharded device batch
    checkpoint.py  orbax checkpoints (state, data-iterator state, metadata) with exact resume
    monitor.py     model FLOPs/MFU, JSONL log, loss plot
    data.py        JudgeLM JSONL -> jlm.data pipeline -> this host's rows
    trainer.py     train(): the loop; export to HF safetensors
    cli.py         `jlm train`
"""
from __future__ import annotations

__all__ = ["TrainConfig", "PRESETS", "build_config", "train", "TrainResult"]


def __getattr__(name):  # lazy: `jlm train --help` should not import JAX
    if name in ("TrainConfig", "PRESETS", "build_config"):
        from jlm.train import config
        return getattr(config, name)
    if name in ("train", "TrainResult"):
        from jlm.train import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'jlm.train' has no attribute {name!r}")
