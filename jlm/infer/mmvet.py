"""MM-Vet: judging a multimodal model's text answers against the ground truth, scored as MM-Vet does.

    res = judge_mmvet(judge, read_mmvet("mm-vet-gt.json", "preds.json"), seed=0)
    res.total, res.by_capability
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jlm.formats.mmvet import MMVetSample, mmvet_item
from jlm.infer.judge import Judgement


@dataclasses.dataclass(frozen=True)
class MMVetResult:
    """Per-sample scores in [0, 1] and MM-Vet-style totals in percent.

    scores[id]: the judge's score for the prediction / 10, clipped to [0, 1]; an unparseable score
    line counts 0 (MM-Vet's GPT grader gives 0 after failed retries). total: mean over `n_total`
    samples x 100 (pass MM-Vet's sample count to count missing predictions as 0). by_capability:
    the same mean over the samples tagged with each capability (a sample counts for all its tags).
    """
    scores: dict[str, float]
    judgements: dict[str, Judgement]
    total: float
    by_capability: dict[str, float]


def mmvet_score(res: Judgement) -> float:
    """One sample's 0-1 score from a "vqa" judgement (the generated second score after the forced 10)."""
    if not res.scores:
        return 0.0
    return float(np.clip(res.scores[0] / 10.0, 0.0, 1.0))


def judge_mmvet(judge, samples: Sequence[MMVetSample], *, seed: int = 0, n_total: int | None = None,
                **score_kw) -> MMVetResult:
    """Judge MM-Vet predictions with JudgeLM's VQA template (ground truth as the reference, a
    placeholder resolved from it with `seed` as Assistant 1 with a forced 10, the prediction as
    Assistant 2). `score_kw` goes to `Judge.score` (e.g. reasons=True)."""
    if not samples:
        raise ValueError("judge_mmvet: no samples")
    items = [mmvet_item(s, seed) for s in samples]
    res = judge.score(items, reference=[it.reference for it in items], mode="vqa", distributions=False, **score_kw)
    scores = {s.sample_id: mmvet_score(r) for s, r in zip(samples, res)}
    denom = len(samples) if n_total is None else n_total
    if denom < len(samples):
        raise ValueError(f"judge_mmvet: n_total={n_total} is less than the {len(samples)} samples given")
    by_cap: dict[str, list[float]] = {}
    for s in samples:
        for c in s.capability:
            by_cap.setdefault(c, []).append(scores[s.sample_id])
    return MMVetResult(scores=scores, judgements={s.sample_id: r for s, r in zip(samples, res)},
                       total=100.0 * sum(scores.values()) / denom,
                       by_capability={c: 100.0 * float(np.mean(v)) for c, v in sorted(by_cap.items())})
