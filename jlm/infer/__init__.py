"""Judging: the decoding engine, score distributions and the `Judge` API.

    from jlm.infer import Judge
    judge = Judge.load("smollm2")
    results = judge.score([{"question_body": ..., "answer1_body": ..., "answer2_body": ...}])
"""
from jlm.infer.distributions import ScoreDistribution
from jlm.infer.engine import Engine, Generation, default_mesh
from jlm.infer.judge import Item, Judge, Judgement
from jlm.infer.sampling import GREEDY, Sampling

__all__ = ["Engine", "Generation", "GREEDY", "Item", "Judge", "Judgement", "Sampling", "ScoreDistribution",
           "default_mesh"]
