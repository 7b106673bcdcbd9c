"""`jlm judge` and `jlm grade`: judge a JSONL file into JudgeLM-compatible output records.

Each output line is the input record plus JudgeLM's prediction fields (`pred_id`, `pred_text`,
`pred_model_id`, `tstamp`, and `reference` when one was shown) and ours: `scores`, `verdict`,
`distribution`, and with --swap the reversed order's `swap` record. Records are appended (and
flushed) the moment their sample is judged, in completion order (longest prompts first), not input
order. Rerunning the same command resumes: samples whose question_id is already in the output are
skipped, and a line cut off by a kill is removed first, so nothing is lost or written twice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from jlm.formats.records import FormatError, iter_jsonl


# ------------------------------------------------------------------------------------------- input
def read_samples(path: str | Path, n_answers: int = 2) -> list[tuple[int, dict]]:
    """(line, record) for each input line; every problem names the file, line and field."""
    out, seen = [], {}
    for line, rec in iter_jsonl(path):
        qid = rec.get("question_id")
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise FormatError(path, line, "question_id", f"expected an integer or string id, got {qid!r}")
        if qid in seen:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} (first on line {seen[qid]}); "
                              "output records are matched to input by question_id")
        seen[qid] = line
        for name in ["question_body"] + [f"answer{k}_body" for k in range(1, n_answers + 1)]:
            if not isinstance(rec.get(name), str):
                raise FormatError(path, line, name, "missing" if name not in rec else
                                  f"expected a string, got {type(rec[name]).__name__}")
        out.append((line, rec))
    return out


def read_references(path: str | Path, ids: list[Any]) -> dict[Any, str]:
    """question_id -> reference text from a JudgeLM references file (`reference` = {"text": ...} or a string)."""
    refs: dict[Any, str] = {}
    lines: dict[Any, int] = {}
    for line, rec in iter_jsonl(path):
        qid = rec.get("question_id")
        ref = rec.get("reference")
        text = ref.get("text") if isinstance(ref, dict) else ref
        if not isinstance(text, str):
            raise FormatError(path, line, "reference", f"expected {{'text': ...}} or a string, got {ref!r}")
        if qid in lines:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} (first on line {lines[qid]})")
        refs[qid], lines[qid] = text, line
    missing = [q for q in ids if q not in refs]
    if missing:
        raise FormatError(path, None, "question_id", f"no reference for question_id {missing[0]!r}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return refs


def done_ids(path: Path, wanted: set) -> set:
    """question_ids already in the output file. A last line cut off by a kill is removed."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a partial last record: the sample is judged again
        with open(path, "r+b") as f:
            f.truncate(end)
        print(f"{path}: removed an incomplete last line ({len(data) - end} bytes) left by an interrupted run",
              file=sys.stderr)
    done = set()
    for line, rec in iter_jsonl(path):
        qid = rec.get("question_id")
        if qid not in wanted:
            raise FormatError(path, line, "question_id", f"id {qid!r} is not in the input; is this output "
                              "from another input file? (choose another --output)")
        if qid in done:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} in the output")
        done.add(qid)
    return done


# ------------------------------------------------------------------------------------------ output
def output_record(rec: dict, res, model_id: str, reference: str | None) -> dict:
    """JudgeLM's output record for one judged sample, plus jlm's fields."""
    out = dict(rec)
    out.update(pred_id=uuid.uuid4().hex[:22], pred_text=res.text, pred_model_id=model_id, tstamp=time.time())
    if reference is not None:
        out["reference"] = reference
    out["scores"] = list(res.scores) if res.scores is not None else None
    if res.verdict is not None:
        out["verdict"] = res.verdict
    if res.ranking is not None:
        out["ranking"] = list(res.ranking)
    if res.distribution is not None:
        out["distribution"] = res.distribution.to_json()
    # with --swap: each order's own judgement, beside the combined one above
    for key, one in (("original", res.original), ("swap", res.swapped)):
        if one is not None:
            out[key] = {"pred_text": one.text, "scores": list(one.scores) if one.scores is not None else None}
            if one.distribution is not None:
                out[key]["distribution"] = one.distribution.to_json()
    if not res.finished:
        out["truncated"] = True  # hit the token cap before the line end / EOS
    if res.error is not None:
        out["error"] = res.error
    return out


def describe(rec: dict, res) -> str:
    """One readable line per judged sample."""
    q = " ".join(rec["question_body"].split())
    q = q if len(q) <= 60 else q[:57] + "..."
    if res.error:
        return f"{rec['question_id']}: {q}\n    error: {res.error}"
    shown = res.text.split("\n")[0] or "(empty)"
    if res.mode == "single":
        verdict = f"score {res.scores[0]:g}" if res.scores else "no score (unparseable)"
    elif res.mode == "multi":
        verdict = ("ranking " + " > ".join(f"answer {i + 1}" for i in res.ranking)) if res.ranking else "unparseable"
    else:
        verdict = {1: "answer 1 is better", -1: "answer 2 is better"}.get(res.verdict, "tie")
        if res.scores is None:
            verdict += " (no score line: JudgeLM counts a tie)"
        else:
            verdict += f" ({' vs '.join(f'{s:g}' for s in res.scores)})"
    lines = [f"{rec['question_id']}: {q}", f"    judge wrote: {shown!r} -> {verdict}"]
    d = res.distribution
    if d is not None:
        mass = 1.0 - d.residual
        probs = f"P(1 wins/tie/2 wins) = {'/'.join(f'{p:.2f}' for p in d.p_win)}, " if d.p_win else ""
        lines.append(f"    distribution: {probs}E[score] = {', '.join(f'{e:.1f}' for e in d.expected)}, "
                     f"P(any score line) = {mass:.2g}")
    if res.reasons:
        r = " ".join(res.reasons.split())
        lines.append(f"    reasons: {r if len(r) <= 300 else r[:297] + '...'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- run
def _parser(prog: str, single: bool) -> argparse.ArgumentParser:
    what = "single answers (answer1_body: the reference answer, given a forced 10; answer2_body: graded)" \
        if single else "answer pairs (question_body, answer1_body, answer2_body)"
    ap = argparse.ArgumentParser(prog=prog, description=f"Judge {what} in a JSONL file with a JudgeLM-style judge.")
    ap.add_argument("--model", default="smollm2",
                    help="checkpoint: HF directory, .safetensors, .gguf, 'smollm2', or a PEFT LoRA adapter directory")
    ap.add_argument("--input", required=True, help="JSONL with question_id, question_body, answer1_body, answer2_body")
    ap.add_argument("--output", required=True, help="JSONL to append results to (rerun to resume)")
    ap.add_argument("--reference-file", help="JSONL with question_id and reference ({'text': ...}); shown to the judge")
    ap.add_argument("--reasons", action="store_true", help="generate the explanation after the scores (slower)")
    if not single:
        ap.add_argument("--swap", action="store_true", help="judge both answer orders and combine them")
    ap.add_argument("--no-distributions", action="store_true", help="skip P(scores) (saves one model call per batch)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=512, help="cap on the reasons' tokens")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (JudgeLM's scripts use 0.2)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tensor-parallel", type=int, default=1, help="shard the model over this many devices")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--quiet", action="store_true", help="no per-sample lines, only the progress bar and summary")
    return ap


def _run(argv, prog: str, mode: str | None, judge=None) -> int:
    """mode None: pairs (or N answers when records have answer3_body ...); "single": grading."""
    from tqdm import tqdm

    from jlm.infer.judge import Judge
    from jlm.infer.sampling import Sampling

    args = _parser(prog, mode == "single").parse_args(argv)
    swap = getattr(args, "swap", False)
    samples = read_samples(args.input)
    ids = [rec["question_id"] for _, rec in samples]
    refs = read_references(args.reference_file, ids) if args.reference_file else {}
    out_path = Path(args.output)
    done = done_ids(out_path, set(ids))
    todo = [rec for _, rec in samples if rec["question_id"] not in done]
    if done:
        print(f"resuming: {len(done)} of {len(samples)} samples already in {out_path}", file=sys.stderr)
    if not todo:
        print(f"nothing to do: all {len(samples)} samples are in {out_path}", file=sys.stderr)
        return 0

    if judge is None:
        import jax.numpy as jnp
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[args.dtype]
        t = time.perf_counter()
        judge = Judge.load(args.model, dtype=dtype, tensor_parallel=args.tensor_parallel,
                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        print(f"loaded {args.model} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    model_id = Path(str(args.model)).name
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    verdicts = {1: 0, 0: 0, -1: 0}
    show = not args.quiet
    with open(out_path, "a", encoding="utf-8") as f, \
            tqdm(total=len(todo), unit="sample", desc=prog, file=sys.stderr, dynamic_ncols=True) as bar:
        def write(res):
            rec = todo[res.index]
            ref = refs.get(rec["question_id"])
            f.write(json.dumps(output_record(rec, res, model_id, ref), ensure_ascii=False) + "\n")
            f.flush()
            if res.verdict is not None:
                verdicts[res.verdict] += 1
            if show:
                bar.write(describe(rec, res), file=sys.stdout)
            bar.update(1)

        judge.score(todo, reference=[refs.get(r["question_id"]) for r in todo] if refs else None,
                    reasons=args.reasons, swap=swap, distributions=not args.no_distributions,
                    mode=mode, sampling=sampling, on_result=write)
        os.fsync(f.fileno())
    if mode is None:
        print(f"{len(todo)} judged: answer 1 better {verdicts[1]}, tie {verdicts[0]}, answer 2 better "
              f"{verdicts[-1]} -> {out_path}")
    else:
        print(f"{len(todo)} graded -> {out_path}")
    return 0


def judge_main(argv: list[str], *, judge=None) -> int:
    """`jlm judge`: answer pairs. `judge` injects a ready `Judge` (tests, notebooks)."""
    return _run(argv, "jlm judge", None, judge)


def grade_main(argv: list[str], *, judge=None) -> int:
    """`jlm grade`: single-answer grading, JudgeLM's way (answer 1 = reference answer, forced 10)."""
    return _run(argv, "jlm grade", "single", judge)


# -------------------------------------------------------------------------------------------- chat
def chat_main(argv: list[str], *, judge=None, stdin=None, stdout=None) -> int:
    """`jlm chat`: judge one sample of a JSONL file (with reasons), then answer follow-up questions
    read from stdin, one per line, streaming each answer from the judgement's kept KV cache."""
    from jlm.infer.chat import JudgeChat
    from jlm.infer.judge import Judge

    ap = argparse.ArgumentParser(prog="jlm chat", description="Judge one sample, then ask the judge about it "
                                 "(one question per line on stdin; an empty line or EOF ends the chat).")
    ap.add_argument("--model", default="smollm2",
                    help="checkpoint: HF directory, .safetensors, .gguf, 'smollm2', or a PEFT LoRA adapter directory")
    ap.add_argument("--input", required=True, help="JSONL with question_id, question_body, answer1_body, answer2_body")
    sel = ap.add_mutually_exclusive_group()
    sel.add_argument("--index", type=int, default=0, help="0-based record number in --input (default 0)")
    sel.add_argument("--question-id", help="judge the record with this question_id instead")
    ap.add_argument("--reference-file", help="JSONL with question_id and reference ({'text': ...})")
    ap.add_argument("--mode", choices=["pair", "single", "multi", "vqa"], help="default: pair for 2 answers, else multi")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="cap on the judgement's and each answer's tokens")
    ap.add_argument("--context", type=int, help="tokens for the whole chat (default: model context, at most 2048)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on GPU")
    args = ap.parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout

    samples = read_samples(args.input)
    if args.question_id is not None:
        found = [rec for _, rec in samples if str(rec["question_id"]) == args.question_id]
        if not found:
            raise FormatError(args.input, None, "question_id", f"no record has question_id {args.question_id!r}")
        rec = found[0]
    else:
        if not 0 <= args.index < len(samples):
            raise FormatError(args.input, None, None, f"--index {args.index} is outside the file's "
                              f"{len(samples)} records")
        rec = samples[args.index][1]
    ref = None
    if args.reference_file:
        ref = read_references(args.reference_file, [rec["question_id"]])[rec["question_id"]]
    if judge is None:
        import jax.numpy as jnp
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, None: None}[args.dtype]
        judge = Judge.load(args.model, dtype=dtype, batch_size=1, max_new_tokens=args.max_new_tokens)

    chat = JudgeChat(judge, rec, reference=ref, mode=args.mode, context=args.context)
    print(describe(rec, chat.judgement), file=stdout)
    print(f"judgement:\n{chat.judgement.text}\n", file=stdout, flush=True)
    for line in stdin:
        question = line.strip()
        if not question:
            break
        print(f"> {question}", file=stdout, flush=True)
        for piece in chat.ask(question, max_new=args.max_new_tokens):
            print(piece, end="", file=stdout, flush=True)
        print("\n", file=stdout, flush=True)
    s = chat.stats
    print(f"[prompt run once: {s['prompt_tokens']} tokens; follow-up tokens fed: {s['extended_tokens']}; "
          f"generated: {s['generated_tokens']}]", file=sys.stderr)
    return 0
