"""Run monitoring: model FLOPs and MFU, a JSONL log, the progress bar, the loss plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from jlm.model.config import LlamaConfig

# dense bf16 peak TFLOP/s (no sparsity) by device kind substring; MFU is reported against these
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
               "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}


def peak_tflops(device_kind: str) -> float | None:
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def step_flops(cfg: LlamaConfig, rows: int, seq_len: int, *, lora: bool = False) -> float:
    """Model FLOPs of training on `rows` x `seq_len` tokens, the peer benchmark's formula
    (benchmarks/peers/hf_peer_train.py): 6 x params per token (forward 2, backward 4) plus causal
    attention, 12 x layers x hidden x seq_len per token halved. Recomputation under remat is not
    counted (model FLOPs, not hardware FLOPs). Under LoRA the frozen weights get no weight
    gradient: 4 x params instead of 6."""
    tokens = rows * seq_len
    per_param = 4.0 if lora else 6.0
    return per_param * cfg.num_params * tokens + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len * tokens / 2


class RunLog:
    """Appends one JSON object per logged step to `path` (kept across resumes: the resumed run's
    lines follow the checkpoint's step, earlier lines after it are dropped first)."""

    def __init__(self, path: str | Path, resume_from_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is None:
            self.path.write_text("")
        elif self.path.exists():  # drop lines of steps past the checkpoint: they are redone
            kept = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) <= resume_from_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        self._f = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def plot_loss(records: Iterable[dict[str, Any]], out_png: str | Path, title: str = "") -> Path | None:
    """Loss (and learning rate, on a second axis) against step; None when there is nothing to plot."""
    rows = [r for r in records if "loss" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", lw=1.2, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if all("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=0.8, alpha=0.7)
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(title or "training loss")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
