"""MM-Vet files: the ground-truth JSON, a model's prediction JSON, and the judge items built from them.

`mm-vet-gt.json` (MM-Vet's release) is one object keyed by sample id ("v1_0", ...):

    {"v1_0": {"imagename": "v1_0.png", "question": "What is x in the equation?",
              "answer": "-1<AND>-5", "capability": ["ocr", "math"]}, ...}

A prediction file maps the same ids to the model's answer strings: {"v1_0": "x = -1 or -5", ...}.
In `answer`, "<OR>" separates acceptable alternatives and "<AND>" joins parts that must all be given.

JudgeLM (`gen_model_judgement_mmvet.py`) shows the raw ground truth as the reference, a placeholder
derived from it as Assistant 1 (forced to 10 by "### Response:10") and the prediction as Assistant 2.
It picks the `<OR>` alternative with unseeded `random.choice`; here the pick comes from a generator
seeded by (seed, sample id), so a sample's prompt never depends on the run or on the other samples.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jlm.formats.prompts import vqa_answer_placeholder
from jlm.formats.records import FormatError, Item


@dataclasses.dataclass(frozen=True)
class MMVetSample:
    sample_id: str
    question: str
    ground_truth: str  # raw, with <AND> / <OR>
    prediction: str
    imagename: str | None = None
    capability: tuple[str, ...] = ()


def _load_object(path: str | Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(path, e.lineno, None, f"not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise FormatError(path, None, None, f"expected the {what} object keyed by sample id, got a "
                          f"{type(data).__name__}")
    return data


def read_mmvet(gt_path: str | Path, pred_path: str | Path, *, allow_missing: bool = False) -> list[MMVetSample]:
    """The samples of an MM-Vet ground-truth file joined with a prediction file, in the GT's order.

    A sample without a prediction is an error naming it, or skipped with allow_missing=True (MM-Vet's
    grader then counts it as 0; `mmvet_total` takes the number of GT samples for that).
    """
    gt = _load_object(gt_path, "ground-truth")
    pred = _load_object(pred_path, "prediction")
    out = []
    for sid, rec in gt.items():
        if not isinstance(rec, dict):
            raise FormatError(gt_path, None, sid, f"expected an object with question/answer, got {rec!r}")
        for name in ("question", "answer"):
            if not isinstance(rec.get(name), str):
                raise FormatError(gt_path, None, f"{sid}.{name}", "missing" if name not in rec else
                                  f"expected a string, got {type(rec[name]).__name__}")
        cap = rec.get("capability", [])
        cap = [cap] if isinstance(cap, str) else cap
        if not isinstance(cap, list) or not all(isinstance(c, str) for c in cap):
            raise FormatError(gt_path, None, f"{sid}.capability", f"expected a list of strings, got {cap!r}")
        if sid not in pred:
            if allow_missing:
                continue
            raise FormatError(pred_path, None, sid, "no prediction for this sample id of the ground truth "
                              f"({gt_path}); pass allow_missing=True to skip it")
        p = pred[sid]
        if isinstance(p, dict):  # some dumps store {"answer": ...} / {"text": ...} per id
            p = p.get("answer", p.get("text"))
        if not isinstance(p, str):
            raise FormatError(pred_path, None, sid, f"expected the predicted answer string, got {pred[sid]!r}")
        out.append(MMVetSample(sid, rec["question"], rec["answer"], p, rec.get("imagename"), tuple(cap)))
    extra = [k for k in pred if k not in gt]
    if extra:
        raise FormatError(pred_path, None, extra[0], f"sample id not in the ground truth {gt_path}"
                          + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return out


def resolve_ground_truth(ground_truth: str, sample_id: Any, seed: int = 0) -> str:
    """Assistant 1's placeholder answer: one `<OR>` alternative (seeded per sample id), `<AND>` -> " and "."""
    key = zlib.crc32(str(sample_id).encode("utf-8"))  # stable across runs (Python's hash() is salted)
    return vqa_answer_placeholder(ground_truth, np.random.default_rng([seed, key]))


def mmvet_item(sample: MMVetSample, seed: int = 0) -> Item:
    """The judge item of one sample: question, (placeholder, prediction), reference = raw ground truth."""
    return Item(sample.question, (resolve_ground_truth(sample.ground_truth, sample.sample_id, seed),
                                  sample.prediction), sample.ground_truth, sample.sample_id)
