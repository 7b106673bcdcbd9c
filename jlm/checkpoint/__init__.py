"""Checkpoint I/O: read Hugging Face (safetensors, PyTorch .bin) and GGUF checkpoints as Hugging Face
tensors, write Hugging Face safetensors checkpoints. No torch, no transformers.

    read_config(path) -> dict                     config.json, or synthesized from GGUF metadata
    iter_tensors(path) -> Iterator[(name, array)]  HF names and layouts, one tensor at a time
    tensor_shapes(path) -> {name: shape}           from headers only
    write_hf_checkpoint(out_dir, tensors, config, max_shard_bytes=2**31)

PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors): jlm.checkpoint.peft.
Model names (`smollm2`, `smollm2-judge`) and an adapter's base checkpoint: jlm.checkpoint.paths.
Nothing here imports JAX.
"""
from jlm.checkpoint.errors import CheckpointError
from jlm.checkpoint.export import FLOAT_DTYPES, ExportSummary, hf_config, write_hf_checkpoint
from jlm.checkpoint.reader import iter_tensors, read_config, tensor_shapes

__all__ = ["FLOAT_DTYPES", "CheckpointError", "ExportSummary", "hf_config", "iter_tensors", "read_config", "tensor_shapes",
           "write_hf_checkpoint"]
