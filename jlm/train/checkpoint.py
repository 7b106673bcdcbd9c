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
checkpoint is what `--resume` picks. Once a save is complete, the sizes of its files are written
beside it (`jlm_files.json`); `restore_latest` checks them, and a checkpoint with a missing or
truncated file (or one that does not read) is moved to `<directory>_damaged/` and the one before
it restored; hence `keep` defaults to 2, so that there is one to fall back to.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from jlm.distributed import barrier
from jlm.interrupt import critical
from jlm.train.config import TrainConfigError
from jlm.train.state import TrainState

MANIFEST = "jlm_files.json"  # relative path -> size of every file of a finished checkpoint


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


def existing_steps(directory: str | Path) -> list[int]:
    """Steps of the finished checkpoints in `directory` (without starting orbax)."""
    d = Path(directory)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir()) if d.is_dir() else []


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
        # A Ctrl-C inside orbax (waiting for the previous save, queueing this one) breaks its state;
        # it waits until the save is queued. (Stopping waits for the previous save all the same.)
        with critical():
            self.manager.wait_until_finished()  # orbax would wait for the previous save anyway
            self._write_manifests()
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

    def read_meta(self, step: int) -> dict:
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore_latest(self, abstract: TrainState, frozen: Callable[[], dict], check: Callable[[dict], None],
                       say: Callable[[str], None]) -> tuple[int, TrainState, Any, dict] | None:
        """(step, state, data state, meta) of the latest checkpoint that is whole, or None if there is
        none at all. `check(meta)` raises if the checkpoint belongs to another run (before any array
        is read, so a different shape gets that message, not orbax's); a damaged checkpoint is moved
        aside, with one line naming its step and what is wrong, and the one before it is tried."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        base: list[dict] = []  # the frozen weights, loaded once, when first needed
        for step in steps:
            problem = self.damage(step)
            if problem is None:
                try:
                    meta = self.read_meta(step)
                except (OSError, ValueError) as e:  # unreadable JSON or a missing item
                    problem = _first_line(e)
            if problem is None:
                check(meta)
                base = base or [frozen()]
                try:
                    return (step, *self.restore(step, abstract, base[0]))
                except Exception as e:  # noqa: BLE001 - orbax wraps tensorstore's read errors in Exception
                    problem = _read_error(e)
                    if problem is None:
                        raise
            moved = self.directory.with_name(self.directory.name + "_damaged") / str(step)
            if jax.process_index() == 0:  # one process moves it; the others wait, then look again
                moved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(self.directory / str(step)), str(moved))
            barrier(f"moving damaged checkpoint {step} aside")
            self.manager.reload()
            say(f"checkpoint step {step} is damaged ({problem}); moved it to {moved}")
        if steps:
            raise TrainConfigError(f"--resume: no checkpoint in {self.directory} is whole (moved to "
                                   f"{self.directory.name}_damaged/); remove --resume to start again")
        return None

    def damage(self, step: int) -> str | None:
        """What is wrong with the files of checkpoint `step` by its manifest: a file missing or of
        another size; None when they match, or when there is no manifest (yet) to compare."""
        d = self.directory / str(step)
        manifest = d / MANIFEST
        if not manifest.is_file():
            return None
        try:
            sizes = json.loads(manifest.read_text())
        except ValueError:
            return f"{manifest} is not valid JSON"
        for name, size in sizes.items():
            f = d / name
            if not f.is_file():
                return f"{f} is missing"
            if f.stat().st_size != size:
                return f"{f} has {f.stat().st_size} of its {size} bytes"
        return None

    def _write_manifests(self) -> None:
        """Record the file sizes of every finished checkpoint that has no manifest yet (process 0:
        orbax finishes a save on every process before it counts as finished)."""
        if jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            d = self.directory / str(step)
            if not d.is_dir() or (d / MANIFEST).exists():
                continue
            sizes = {str(f.relative_to(d)): f.stat().st_size for f in sorted(d.rglob("*")) if f.is_file()}
            tmp = d / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(sizes, indent=0))
            tmp.replace(d / MANIFEST)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._write_manifests()
        self.manager.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_error(e: BaseException) -> str | None:
    """The first line of the file error (OSError, or tensorstore's ValueError) behind `e`, or None
    when `e` is not one: then it is a bug, not a damaged file."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (OSError, ValueError)):
            return _first_line(e)
        e = e.__cause__ or e.__context__
    return None


def same_run_fields(meta: dict, current: dict, fields=("model", "init", "model_shape", "lora_rank", "lora_targets",
                                                         "precision", "global_batch", "weighting", "score_weight",
                                                         "seq_len", "packing", "seed", "train_data")) -> list[str]:
    """Config fields that differ between a checkpoint and the run resuming it (an exact resume
    needs them equal; lr, logging and the like may change)."""
    old = meta.get("config", {})
    return [f for f in fields if f in old and old[f] != current.get(f)]

