"""Orbax checkpoints of a run: train state, data-iterator state and run metadata, every N steps and
at the end, keeping the last k.

Each checkpoint holds
  state: step, trainable weights, optimizer state (restored straight into their shardings);
         the frozen base weights under LoRA are not saved: they are the base checkpoint, reloaded
         on resume (a 7B base would otherwise be rewritten at every save);
  data:  the grain iterator's state (JSON), so the batch stream continues where it stopped;
  meta:  config, seed, base model and step, to check a resume against the run it continues.
There is no other randomness to save: the step is deterministic, and the data augmentation draws
from (seed, epoch, record) inside the pipeline.

Saves are asynchronous (training continues while the arrays are written); `close()` waits.
A run killed mid-save leaves a temporary directory that orbax ignores, so the latest *finished*
checkpoint is what `--resume` picks.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jlm.train.state import TrainState


def _encode_data_state(state: Any) -> dict:
    """grain iterator states are dicts (MapDataset iterators) or bytes (some IterDatasets)."""
    if isinstance(state, (bytes, bytearray)):
        return {"kind": "bytes", "value": base64.b64encode(bytes(state)).decode()}
    json.dumps(state)  # fail here, with the value in the message, rather than inside orbax
    return {"kind": "json", "value": state}


def _decode_data_state(raw: dict) -> Any:
    if raw.get("kind") == "bytes":
        return base64.b64decode(raw["value"])
    return raw.get("value")


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: Any, meta: dict) -> None:
        saved = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(saved),
            data=ocp.args.JsonSave(_encode_data_state(data_state)),
            meta=ocp.args.JsonSave(meta),
        ), force=True)

    def restore(self, step: int, abstract: TrainState, frozen: dict) -> tuple[TrainState, Any, dict]:
        """(state, data-iterator state, meta) of checkpoint `step`; arrays land in the shardings
        of `abstract` (see Setup.abstract_state); `frozen` supplies the base weights."""
        target = {"step": abstract.step, "params": abstract.params, "opt_state": abstract.opt_state}
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        s = got["state"]
        state = TrainState(step=s["step"], params=s["params"], frozen=frozen, opt_state=s["opt_state"])
        return state, _decode_data_state(got["data"]), dict(got["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def same_run_fields(meta: dict, current: dict, fields=("model", "init", "model_shape", "lora_rank", "lora_targets",
                                                         "precision", "global_batch", "weighting", "score_weight",
                                                         "seq_len", "packing", "seed", "train_data")) -> list[str]:
    """Config fields that differ between a checkpoint and the run resuming it (an exact resume
    needs them equal; lr, logging and the like may change)."""
    old = meta.get("config", {})
    return [f for f in fields if f in old and old[f] != current.get(f)]

