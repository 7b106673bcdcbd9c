"""Model ranking from pairwise verdicts: Bradley-Terry strengths and win rates.

P(i beats j) = p_i / (p_i + p_j). A tie counts half a win for each side. Strengths are fitted with Hunter's
MM iteration (2004) on the win counts plus a small symmetric prior (`prior` virtual games, split evenly, for
every pair that met), which keeps a model that never won (or never lost) at a finite strength. Strengths
are normalised to geometric mean 1 and also reported on the Elo scale: 1000 + 400 * log10(p).
Models in comparison-graph components that never meet are not comparable; their ratings are each fitted
relative to the common normalisation only.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np


def bradley_terry(
    outcomes: Iterable[tuple[Hashable, Hashable, int]],
    *,
    prior: float = 0.5,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> list[dict[str, Any]]:
    """Ranking from (model_a, model_b, result) with result 1 (a wins), 0 (tie), -1 (b wins), best first.

    Each entry: model, rating (Elo scale), strength, win_rate ((wins + ties / 2) / games), wins, ties,
    losses, games.
    """
    if prior < 0:
        raise ValueError(f"bradley_terry: prior={prior} < 0")
    models: dict[Hashable, int] = {}
    games: list[tuple[int, int, int]] = []
    for a, b, result in outcomes:
        if result not in (1, 0, -1):
            raise ValueError(f"bradley_terry: result {result!r} is not 1, 0 or -1")
        if a == b:
            raise ValueError(f"bradley_terry: model {a!r} plays itself")
        ia, ib = models.setdefault(a, len(models)), models.setdefault(b, len(models))
        games.append((ia, ib, result))
    if not games:
        return []
    k = len(models)
    won = np.zeros((k, k))  # won[i, j]: wins of i over j, ties counted half
    for ia, ib, result in games:
        won[ia, ib] += 1.0 if result == 1 else 0.5 if result == 0 else 0.0
        won[ib, ia] += 1.0 if result == -1 else 0.5 if result == 0 else 0.0
    met = (won + won.T) > 0
    won_reg = won + met * (prior / 2)
    n = won_reg + won_reg.T
    w = won_reg.sum(axis=1)
    p = np.ones(k)
    for _ in range(max_iter):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, w / np.where(denom > 0, denom, 1.0), p)
        new = np.maximum(new, 1e-300)
        new /= math.exp(float(np.mean(np.log(new))))
        done = float(np.max(np.abs(np.log(new) - np.log(p)))) < tol
        p = new
        if done:
            break

    wins, ties, losses = np.zeros(k, int), np.zeros(k, int), np.zeros(k, int)
    for ia, ib, result in games:
        if result == 0:
            ties[ia] += 1
            ties[ib] += 1
        else:
            winner, loser = (ia, ib) if result == 1 else (ib, ia)
            wins[winner] += 1
            losses[loser] += 1
    names = list(models)
    rows = []
    for i, name in enumerate(names):
        g = int(wins[i] + ties[i] + losses[i])
        rows.append({
            "model": name,
            "rating": 1000.0 + 400.0 * math.log10(p[i]) if p[i] > 0 else float("-inf"),
            "strength": float(p[i]),
            "win_rate": (wins[i] + ties[i] / 2) / g,
            "wins": int(wins[i]),
            "ties": int(ties[i]),
            "losses": int(losses[i]),
            "games": g,
        })
    rows.sort(key=lambda r: (-r["rating"], str(r["model"])))
    return rows


def kendall_tau(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> float:
    """Kendall's tau-b between two scorings of the same models (e.g. judge vs teacher BT ratings)."""
    keys = sorted(set(a) & set(b), key=str)
    if len(keys) < 2:
        raise ValueError("kendall_tau: need at least 2 common models")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            da = np.sign(a[keys[i]] - a[keys[j]])
            db = np.sign(b[keys[i]] - b[keys[j]])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 0.0
