"""The training loop: set up, (re)start, step, log, checkpoint, export, plot.

    from jlm.train import TrainConfig, train
    result = train(TrainConfig(model="smollm2", train_data=("train.jsonl",), max_steps=100))

`train` reads the data named by the config unless given `samples` (judge samples) or `batches`
(any iterator of host batches with `get_state()` / `set_state()`, e.g. for benchmarks).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jlm.checkpoint import FLOAT_DTYPES
from jlm.distributed import together
from jlm.formats.records import drop_partial_last_line
from jlm.malloc import cap_arenas
from jlm.model.config import LlamaConfig
from jlm.model.load import save_adapter, save_pretrained
from jlm.tokenizer import load_tokenizer
from jlm.train.checkpoint import Checkpointer, existing_steps, same_run_fields
from jlm.train.config import TrainConfig, TrainConfigError, steps_for
from jlm.train.data import check_batch, judge_batches, read_train_samples, with_target_index
from jlm.train.monitor import RunLog, step_flops, peak_tflops, plot_loss, read_log
from jlm.train.optim import lr_schedule, make_optimizer
from jlm.train.state import (Setup, TrainState, count_params, init_state, load_weights, make_setup,
                             model_config, random_weights)
from jlm.train.step import make_train_step, shard_batch


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    setup: Setup
    steps: int  # optimizer steps done in total (including those before a resume)
    log_path: Path
    checkpoint_dir: Path
    export_dir: Path | None
    adapter_dir: Path | None  # LoRA runs: the adapters alone, as a PEFT adapter of cfg.model
    plot_path: Path | None
    records: list[dict[str, Any]]  # the log (all steps, across resumes)

    @property
    def model(self):
        """The trained model (a Llama over the state's arrays)."""
        return self.setup.parts.merge(self.state.params, self.state.frozen)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[jlm train] {msg}", flush=True)


def train(cfg: TrainConfig, *, samples: Sequence | None = None, tokenizer=None,
          batches: Iterator[dict[str, np.ndarray]] | None = None, num_samples: int | None = None,
          model_cfg: LlamaConfig | None = None, mesh: Mesh | None = None) -> TrainResult:
    """Run (or, with cfg.resume, continue) a fine-tuning run; see the module docstring.

    samples: judge samples instead of reading cfg.train_data; tokenizer: instead of loading one.
    batches: host batches instead of the judge pipeline (needs cfg.max_steps or num_samples).
    model_cfg: the architecture for init="random" when it is not one of the named shapes.
    mesh: a mesh over some of the devices, instead of the config's mesh over all of them.
    """
    cap_arenas()  # before the step's threads allocate: less fragmentation over a long run (jlm.malloc)
    out = Path(cfg.out_dir)
    if not cfg.resume and (steps := existing_steps(out / "checkpoints")):
        raise TrainConfigError(f"{out / 'checkpoints'} holds the checkpoints of an earlier run (up to step "
                               f"{steps[-1]}): pass --resume to continue it, or choose another --out-dir")
    out.mkdir(parents=True, exist_ok=True)
    with together("reading the model config and the training data"):  # a file missing on one host stops all
        if model_cfg is None:
            model_cfg = model_config(cfg)
        elif cfg.init != "random":
            raise TrainConfigError("model_cfg is only for init='random'; a checkpoint brings its own config")
        if batches is None:
            if samples is None:
                samples = read_train_samples(cfg.train_data)
            if tokenizer is None:
                src = cfg.tokenizer or cfg.model
                if src is None:
                    raise TrainConfigError("no tokenizer: set tokenizer (or model)")
                tokenizer = load_tokenizer(src)

    # ------------------------------------------------------------------------------ data
    if batches is None:
        batches = judge_batches(cfg, samples, tokenizer)
        num_samples = len(samples)
    total = steps_for(cfg, num_samples)

    # ----------------------------------------------------------------------------- state
    setup = make_setup(cfg, model_cfg, make_optimizer(cfg, total), mesh=mesh)
    parts = setup.parts
    _say(f"{model_cfg.num_params / 1e6:.1f}M parameters, {count_params(parts, parts.trainable) / 1e6:.2f}M trained; "
         f"mesh {dict(setup.mesh.shape)}; global batch {cfg.global_batch} = {setup.accum} x {setup.micro_batch} "
         f"rows; {total} steps; precision {cfg.precision}; remat {cfg.remat}")
    ckpt = Checkpointer(out / "checkpoints", keep=cfg.keep)
    meta = {"config": cfg.to_dict(), "model_config": dataclasses.asdict(model_cfg), "total_steps": total}
    start = 0

    def base_weights() -> dict:
        if not parts.frozen:
            return {}
        # LoRA: the base weights are not in the checkpoint; rebuild them exactly
        return load_weights(setup)[1] if cfg.init == "checkpoint" else random_weights(setup)[1]

    def same_run(old: dict) -> None:  # checked before any array is read: a shape change gets this message
        diff = same_run_fields(old, meta["config"])
        if diff:
            was = ", ".join(f"{f}={old['config'][f]!r} (this run {meta['config'].get(f)!r})" for f in diff)
            raise TrainConfigError(f"--resume: the checkpoint in {ckpt.directory} was made with {was}; an exact "
                                   "resume needs the same values (or choose another --out-dir)")
        if old.get("total_steps") != total:
            raise TrainConfigError(f"--resume: checkpoint planned {old.get('total_steps')} steps, this run {total}")

    found = ckpt.restore_latest(setup.abstract_state(), base_weights, same_run, _say) if cfg.resume else None
    latest = None if found is None else found[0]
    if cfg.resume and latest is None:
        _say(f"--resume: no checkpoint in {ckpt.directory}, starting from scratch")
    if latest is not None:
        _, state, data_state, _ = found
        batches.set_state(data_state)
        start = latest
        _say(f"resumed at step {start} from {ckpt.directory / str(start)}")
    else:
        if cfg.init == "checkpoint":
            params, frozen = load_weights(setup)
            state = init_state(setup, params, frozen)
        else:
            state = init_state(setup)

    # ------------------------------------------------------------------------------ loop
    step_fn = make_train_step(setup, lr_schedule(cfg, total))
    lead = jax.process_index() == 0  # one host writes the log and the plot
    if lead and latest is not None:
        _repair_log(out / "log.jsonl")
    log = RunLog(out / "log.jsonl", resume_from_step=start if latest is not None else None) if lead else None
    peak = cfg.peak_tflops or peak_tflops(jax.devices()[0].device_kind)  # None on CPU: no MFU
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=start, disable=not cfg.progress or jax.process_index() != 0,
               dynamic_ncols=True, desc="train")
    # since the last log line: real tokens, model FLOPs ("flops"), wall time, steps
    acc = {"tokens": 0.0, "flops": 0.0, "t": time.perf_counter(), "n": 0}
    first_timed = [True]

    def record(step: int, metrics, flops: float) -> None:
        """Fetch a finished step's metrics (blocks until it is done) and log every `log_every`."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bar.update(1)  # a finished step: the bar's rate and ETA follow the device, not the dispatch
        acc["tokens"] += m["tokens"]
        acc["flops"] += flops
        acc["n"] += 1
        if step % cfg.log_every and step != total:
            return
        rec = {"step": step, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
               "target_tokens": m["target_tokens"], "tokens": m["tokens"], "time": time.time()}
        now = time.perf_counter()
        dt = now - acc["t"]
        if not first_timed[0]:  # the first interval after (re)start includes compilation
            rec["tokens_per_s"] = acc["tokens"] / dt
            rec["step_s"] = dt / acc["n"]
            if peak:
                rec["mfu"] = acc["flops"] / dt / (peak * 1e12 * setup.mesh.size)
        first_timed[0] = False
        acc.update(tokens=0.0, flops=0.0, t=now, n=0)
        if log is not None:
            log.write(rec)
        post = dict(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", gnorm=f"{m['grad_norm']:.2f}")
        if "tokens_per_s" in rec:
            post["tok/s"] = f"{rec['tokens_per_s']:.0f}"
        bar.set_postfix(post)

    pending = None
    try:
        for step in range(start, total):
            try:
                host = next(batches)
            except StopIteration:
                raise RuntimeError(f"the data ran out after {step} of {total} steps") from None
            if jax.process_count() == 1:  # several hosts: the batch stream adds it to the global batch
                host = with_target_index(host)
            check_batch(host, model_cfg.vocab_size, cfg.packing)
            rows, seq = host["input_ids"].shape
            flops = step_flops(model_cfg, rows * jax.process_count(), seq, lora=bool(cfg.lora_rank))
            state, metrics = step_fn(state, shard_batch(setup, host))
            if pending is not None:  # read step k-1 while step k runs: the device never idles on us
                record(*pending)
            pending = (step + 1, metrics, flops)
            if (step + 1) % cfg.save_every == 0 or step + 1 == total:
                ckpt.save(step + 1, state, batches.get_state(), {**meta, "step": step + 1})
        if pending is not None:
            record(*pending)
    except BaseException:
        if pending is not None:  # log the last finished step before going down (best effort)
            try:
                record(*pending)
            except Exception:
                pass
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
        ckpt.close()  # waits for the last asynchronous save

    # ---------------------------------------------------------------------- export, plot
    export_dir = adapter_dir = None
    if cfg.export:
        base = cfg.model if cfg.init == "checkpoint" else None
        adapter = out / "adapter" if cfg.lora_rank else None
        export_dir = export_hf(setup, state, out / "hf", dtype=cfg.export_dtype, tokenizer_src=cfg.tokenizer or base,
                               adapter_dir=adapter, base=base)
        adapter_dir = adapter if export_dir is not None else None  # None on the hosts that do not write
    records = read_log(out / "log.jsonl") if lead else []
    plot_path = None
    if cfg.plot and lead:
        plot_path = plot_loss(records, out / "loss.png", title=f"{cfg.model or cfg.model_shape}: training loss")
    if records:
        _say(f"done: step {records[-1]['step']}, loss {records[-1]['loss']:.4f}; log {out / 'log.jsonl'}")
    return TrainResult(state=state, setup=setup, steps=total, log_path=out / "log.jsonl",
                       checkpoint_dir=ckpt.directory, export_dir=export_dir, adapter_dir=adapter_dir,
                       plot_path=plot_path, records=records)


def _repair_log(path: Path) -> None:
    """Drop a last line of the log cut off by a kill (as `jlm judge` repairs its output)."""
    if path.exists() and (cut := drop_partial_last_line(path)):
        _say(f"{path}: removed an incomplete last line ({cut} bytes) left by an interrupted run")


def export_hf(setup: Setup, state: TrainState, out_dir: Path, *, dtype: str = "bfloat16",
              tokenizer_src: str | None = None, adapter_dir: Path | None = None,
              base: str | None = None) -> Path | None:
    """The trained model as a Hugging Face safetensors directory, LoRA adapters merged in; with
    `adapter_dir` (LoRA runs), the adapters alone too, as a PEFT adapter of base model `base` (the
    config's `model` as given; None for a random base, which then has to be named when loading).

    One host: tensors stream from the devices one at a time. Several hosts: each weight is gathered
    to every host (in the state's dtype, then cast to the export dtype; adapters stay fp32 for the
    merge) and host 0 writes, so host RAM must hold the model once in the export dtype."""
    params, frozen = state.params, state.frozen
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        np_dtype = FLOAT_DTYPES[dtype]
        lora = set(setup.parts.trainable) if setup.parts.frozen else set()

        def gather(tree):
            return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)).astype(
                np.float32 if k in lora else np_dtype) for k, v in tree.items()}
        params, frozen = gather(params), gather(frozen)
        if jax.process_index() != 0:
            return None
    model = setup.parts.merge(params, frozen)
    if adapter_dir is not None:
        save_adapter(model, adapter_dir, base=base)
    return Path(save_pretrained(model, out_dir, dtype=dtype, tokenizer_src=tokenizer_src))
