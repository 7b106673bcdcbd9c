"""`jlm judge` and `jlm grade`: judge a JSONL file into JudgeLM-compatible output records.

Each output line is the input record plus JudgeLM's prediction fields (`pred_id`, `pred_text`,
`pred_model_id`, `tstamp`, and `reference` when one was shown) and ours: `scores`, `verdict`,
`distribution`, with --swap the reversed order's `swap` record, and `input_truncated` /
`input_tokens_removed` where the answers were cut to fit the context (--on-overflow).

Records are appended (and flushed) the moment their sample is judged, in completion order
(longest prompts first). Rerunning the same command resumes: samples whose question_id is already
in the output are skipped, a line cut off by a kill is removed first, and records of samples that
could not be judged (`error`) are judged again; a rerun with other flags (--swap, --model, ...)
is refused rather than mixing two kinds of record in one file. When every sample is done the file
is rewritten in input order (atomically), so JudgeLM's line-aligned eval reads it as it is. The
exit status is 1 when a sample could not be judged (its prompt does not fit even with empty answers).

Several processes (`--distributed`, or `--coordinator/--num-processes/--process-id`: the same command
in each) split the remaining samples; each appends to OUTPUT.processI beside the output (a folder all
of them can write) and process 0 folds those into the output at the end, or at the start of a rerun
after a kill.
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

from jlm import distributed
from jlm.formats.records import FormatError, drop_partial_last_line, iter_jsonl


# ------------------------------------------------------------------------------------------- input
def read_judge_input(path: str | Path, n_answers: int = 2) -> list[tuple[int, dict]]:
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
        names = ["question_body"] + [f"answer{k}_body" for k in range(1, n_answers + 1)]
        while f"answer{len(names)}_body" in rec:  # N-answer records: every answer present is checked
            names.append(f"answer{len(names)}_body")
        for name in names:
            if not isinstance(rec.get(name), str):
                raise FormatError(path, line, name, "missing" if name not in rec else
                                  f"expected a string, got {type(rec[name]).__name__}")
        out.append((line, rec))
    return out


def read_references(path: str | Path, ids: list[Any], *, require: bool = False) -> dict[Any, str | None]:
    """question_id -> reference text from a references file: JudgeLM's (`reference` = {"text": ...})
    or `jlm data build`'s (`reference` null where a question has none), or a bare string.

    A question with a null reference, or with no line in the file, is judged without one (unless
    `require`); the references of ids not in `ids` are ignored."""
    refs: dict[Any, str | None] = {}
    lines: dict[Any, int] = {}
    for line, rec in iter_jsonl(path):
        qid = rec.get("question_id")
        if qid is None or isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise FormatError(path, line, "question_id", f"expected an integer or string id, got {qid!r} "
                              "(references are matched to the input by question_id)")
        if "reference" not in rec:
            raise FormatError(path, line, "reference", "missing (null for a question without one)")
        ref = rec["reference"]
        text = ref.get("text") if isinstance(ref, dict) else ref
        if isinstance(ref, dict) and not isinstance(text, str):
            raise FormatError(path, line, "reference.text", f"expected a string, got {text!r}")
        if text is not None and not isinstance(text, str):
            raise FormatError(path, line, "reference", f"expected {{'text': ...}}, a string or null, got {ref!r}")
        if qid in lines:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} (first on line {lines[qid]})")
        refs[qid], lines[qid] = text, line
    if require:
        for q in ids:
            if refs.get(q) is None:
                raise FormatError(path, lines.get(q), "reference" if q in refs else "question_id",
                                  f"question_id {q!r} has " + ("a null reference" if q in refs else "no line")
                                  + " (--require-reference)")
    return {q: refs.get(q) for q in ids}


def read_output(path: Path, wanted: set) -> list[tuple[int, dict]]:
    """(line, record) of an output file to resume. A last line cut off by a kill is removed."""
    if not path.exists():
        return []
    if cut := drop_partial_last_line(path):  # a partial last record: the sample is judged again
        print(f"{path}: removed an incomplete last line ({cut} bytes) left by an interrupted run", file=sys.stderr)
    out, seen = [], {}
    for line, rec in iter_jsonl(path):
        qid = rec.get("question_id")
        if qid not in wanted:
            raise FormatError(path, line, "question_id", f"id {qid!r} is not in the input; is this output "
                              "from another input file? (choose another --output)")
        if qid in seen:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} in the output (first on line "
                              f"{seen[qid]})")
        seen[qid] = line
        out.append((line, rec))
    return out


def check_same_run(path: Path, line: int, rec: dict, want: dict[str, Any]) -> None:
    """FormatError unless an output record was made with the flags of this run: `want` holds this run's
    --swap, --no-distributions, --model (its id) and reference for the record's sample."""
    got = {"--swap": "swap" in rec, "--no-distributions": "distribution" not in rec,
           "--model": rec.get("pred_model_id"), "--reference-file": rec.get("reference")}
    for flag, value in want.items():
        if got[flag] == value:
            continue
        if flag == "--model":
            why = f"it was judged by {got[flag]!r}, this run's --model is {value!r}"
        elif flag == "--reference-file":
            why = ("it was judged " + ("without a reference" if got[flag] is None else "with another reference")
                   + ", this run " + ("has none for it" if value is None else "shows one (--reference-file)"))
        else:
            why = f"it was written {'with' if got[flag] else 'without'} {flag}, this run " \
                  f"{'has' if value else 'does not have'} it"
        raise FormatError(path, line, None, f"{why}; resume with the flags of the first run, or choose another "
                          "--output (records of two kinds are not mixed in one file)")


def rewrite(path: Path, records: list[dict]) -> None:
    """Replace `path` by `records`, atomically: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def part_file(path: Path, index: int) -> Path:
    """Where process `index` of a multi-process run appends its records (beside the output)."""
    return path.with_name(f"{path.name}.process{index}")


def gather_parts(path: Path, ids: list) -> bool:
    """Fold the part files of a multi-process run (finished or killed) into the output, in input
    order (a cut last line dropped, ids already in the output kept once), then delete them. False
    when there were none."""
    parts = sorted(path.parent.glob(f"{path.name}.process*"))
    if not parts:
        return False
    pos = {q: i for i, q in enumerate(ids)}
    records = {}
    for f in (path, *parts):
        for _, rec in read_output(f, set(pos)):
            records.setdefault(rec["question_id"], rec)
    rewrite(path, sorted(records.values(), key=lambda r: pos[r["question_id"]]))  # a kill here keeps the parts
    for part in parts:
        part.unlink()
    return True


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
    if res.input_truncated is not None:  # the answers were cut to fit the context
        out["input_truncated"] = True
        out["input_tokens_removed"] = list(res.input_truncated)
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
    if res.input_truncated is not None:
        lines.append(f"    input truncated to fit the context: {', '.join(map(str, res.input_truncated))} "
                     "tokens removed from the answers")
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
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser(prog: str, single: bool) -> argparse.ArgumentParser:
    what = "single answers (answer1_body: the reference answer, given a forced 10; answer2_body: graded)" \
        if single else "answer pairs (question_body, answer1_body, answer2_body)"
    ap = argparse.ArgumentParser(prog=prog, description=f"Judge {what} in a JSONL file with a JudgeLM-style judge.")
    ap.add_argument("--model", default="smollm2",
                    help="checkpoint: HF directory, .safetensors, .gguf, 'smollm2', or a PEFT LoRA adapter directory")
    ap.add_argument("--input", required=True, help="JSONL with question_id, question_body, answer1_body, answer2_body")
    ap.add_argument("--output", required=True, help="JSONL to append results to (rerun to resume)")
    ap.add_argument("--reference-file", help="JSONL with question_id and reference ({'text': ...} or null); shown "
                    "to the judge. A question without one is judged without a reference")
    ap.add_argument("--require-reference", action="store_true",
                    help="every question must have a reference in --reference-file")
    ap.add_argument("--reasons", action="store_true", help="generate the explanation after the scores (slower)")
    if not single:
        ap.add_argument("--swap", action="store_true", help="judge both answer orders and combine them")
    ap.add_argument("--no-distributions", action="store_true", help="skip P(scores) (saves one model call per batch)")
    ap.add_argument("--on-overflow", choices=["truncate", "error", "skip"], default="truncate",
                    help="a prompt longer than the context: cut the answers to fit (marked input_truncated), "
                         "stop with an error, or leave the sample out (default: truncate)")
    ap.add_argument("--batch-size", type=positive_int, default=16)
    ap.add_argument("--max-new-tokens", type=positive_int, default=512, help="cap on the reasons' tokens")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (JudgeLM's scripts use 0.2)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tensor-parallel", type=positive_int, default=1, help="shard the model over this many devices")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on GPU")
    ap.add_argument("--quiet", action="store_true", help="no per-sample lines, only the progress bar and summary")
    distributed.add_arguments(ap)  # each process judges a share; process 0 writes the one output
    return ap


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _run(argv, prog: str, mode: str | None, judge=None) -> int:
    """mode None: pairs (or N answers when records have answer3_body ...); "single": grading.

    Several processes (--distributed): each judges every count-th remaining sample into its own part
    file beside the output; process 0 folds the parts into the output (also those a killed run left)."""
    ap = _parser(prog, mode == "single")
    args = ap.parse_args(argv)
    if _same_file(args.input, args.output):
        ap.error(f"--output is the input file {args.input}; the results go to another file")
    if distributed.requested(args):  # before anything touches a device
        distributed.initialize(args)
    import jax

    index, count = jax.process_index(), jax.process_count()
    swap = getattr(args, "swap", False)
    with distributed.together("reading the input"):  # a file missing on one host stops every host
        samples = read_judge_input(args.input)
    if not samples:
        print(f"{args.input} has no samples: nothing to judge", file=sys.stderr)
        return 0
    for line, rec in samples:
        if (swap or mode == "single") and "answer3_body" in rec:
            raise FormatError(args.input, line, "answer3_body", f"{'--swap' if swap else prog} judges answer "
                              "pairs; this record has more answers")
    ids = [rec["question_id"] for _, rec in samples]
    line_of = {rec["question_id"]: line for line, rec in samples}
    refs = read_references(args.reference_file, ids, require=args.require_reference) if args.reference_file else {}
    no_ref = sum(refs[q] is None for q in ids) if refs else 0
    if no_ref:
        print(f"{no_ref} of {len(ids)} questions have no reference in {args.reference_file}: judged without one",
              file=sys.stderr)
    model_id = Path(str(args.model)).name
    out_path = Path(args.output)
    if index == 0:  # records of an earlier multi-process run join the output before anything is read
        gather_parts(out_path, ids)
    distributed.barrier("gathering the output of an earlier run")
    old = read_output(out_path, set(ids))
    for line, rec in old:
        if "error" not in rec:
            multi = "answer3_body" in rec
            want = {"--swap": swap, "--model": model_id, "--reference-file": refs.get(rec["question_id"])}
            if not multi:
                want["--no-distributions"] = args.no_distributions
            check_same_run(out_path, line, rec, want)
    done = {rec["question_id"] for _, rec in old if "error" not in rec}
    if len(done) < len(old) and index == 0:  # samples that could not be judged: judged again
        rewrite(out_path, [rec for _, rec in old if "error" not in rec])
    todo = [rec for _, rec in samples if rec["question_id"] not in done]
    if done:
        print(f"resuming: {len(done)} of {len(samples)} samples already in {out_path}", file=sys.stderr)
    if not todo:
        print(f"nothing to do: all {len(samples)} samples are in {out_path}", file=sys.stderr)
        if index == 0:
            _in_input_order(out_path, ids)
        return 0
    final = out_path
    if count > 1:
        todo = todo[index::count]  # strided: each share gets long and short prompts alike
        out_path = part_file(final, index)
        print(f"process {index} of {count}: judging {len(todo)} samples into {out_path}", file=sys.stderr)
    with distributed.together("loading the model"):  # a checkpoint missing on one host stops every host
        if judge is None and todo:
            judge = _load_judge(args)
    with distributed.together("judging"):  # one process failing stops the others at the end, not in a hang
        counts = _judge_share(args, prog, mode, judge, todo, refs, line_of, model_id, out_path) if todo else {}
    if index == 0:
        if not gather_parts(final, ids):  # one process: its records were appended in completion order
            _in_input_order(final, ids)
        if count > 1:
            print(f"{len(samples)} samples in {final} (from {count} processes)")
    return 1 if counts.get("failed") else 0


def _load_judge(args):
    import jax.numpy as jnp

    from jlm.infer.judge import Judge

    dtype = None if args.dtype is None else jnp.dtype(args.dtype)
    t = time.perf_counter()
    judge = Judge.load(args.model, dtype=dtype, tensor_parallel=args.tensor_parallel,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return judge


def _judge_share(args, prog: str, mode: str | None, judge, todo: list[dict], refs: dict, line_of: dict,
                 model_id: str, out_path: Path) -> dict[str, int]:
    """Judge `todo`, appending each record to `out_path` as it is done; print the summary; the counts."""
    from tqdm import tqdm

    from jlm.infer.judge import PromptTooLong
    from jlm.infer.sampling import Sampling

    swap = getattr(args, "swap", False)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    verdicts = {1: 0, 0: 0, -1: 0}
    counts = {"written": 0, "input truncated": 0, "failed": 0}
    show = not args.quiet
    with open(out_path, "a", encoding="utf-8") as f, \
            tqdm(total=len(todo), unit="sample", desc=prog, file=sys.stderr, dynamic_ncols=True) as bar:
        def write(res):
            rec = todo[res.index]
            f.write(json.dumps(output_record(rec, res, model_id, refs.get(rec["question_id"])),
                               ensure_ascii=False) + "\n")
            f.flush()
            counts["written"] += 1
            counts["failed"] += res.error is not None
            counts["input truncated"] += res.input_truncated is not None
            if res.verdict is not None:
                verdicts[res.verdict] += 1
            if show:
                bar.write(describe(rec, res), file=sys.stdout)
            bar.update(1)

        try:
            judge.score(todo, reference=[refs.get(r["question_id"]) for r in todo] if refs else None,
                        reasons=args.reasons, swap=swap, distributions=not args.no_distributions,
                        mode=mode, sampling=sampling, on_result=write, on_overflow=args.on_overflow)
        except PromptTooLong as e:
            qid = todo[e.index]["question_id"]
            raise FormatError(args.input, line_of[qid], None, f"question_id {qid!r}: {e} (--on-overflow error; "
                              "'truncate' cuts the answers to fit, 'skip' leaves the sample out)") from None
        os.fsync(f.fileno())
    skipped = len(todo) - counts["written"]
    judged = counts["written"] - counts["failed"]
    if mode is None:
        summary = (f"{judged} judged: answer 1 better {verdicts[1]}, tie {verdicts[0]}, answer 2 better "
                   f"{verdicts[-1]}")
    else:
        summary = f"{judged} graded"
    extra = [f"{n} {what}" for what, n in (("input truncated", counts["input truncated"]),
                                           ("failed (see their 'error')", counts["failed"]),
                                           ("skipped (too long)", skipped)) if n]
    print(summary + (f"; {', '.join(extra)}" if extra else "") + f" -> {out_path}")
    return counts


def _in_input_order(path: Path, ids: list) -> None:
    """Rewrite a finished output file in input order (it was appended in completion order)."""
    if not path.exists():
        return
    pos = {q: i for i, q in enumerate(ids)}
    records = [rec for _, rec in iter_jsonl(path)]
    if [pos[r["question_id"]] for r in records] != sorted(pos[r["question_id"]] for r in records):
        rewrite(path, sorted(records, key=lambda r: pos[r["question_id"]]))


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

    samples = read_judge_input(args.input)
    line_of = {r["question_id"]: line for line, r in samples}
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
        ref = read_references(args.reference_file, [rec["question_id"]])[rec["question_id"]]  # None: no reference
    if judge is None:
        import jax.numpy as jnp
        dtype = None if args.dtype is None else jnp.dtype(args.dtype)
        judge = Judge.load(args.model, dtype=dtype, batch_size=1, max_new_tokens=args.max_new_tokens)

    try:
        chat = JudgeChat(judge, rec, reference=ref, mode=args.mode, context=args.context)
    except ValueError as e:  # the record's prompt does not fit the chat context
        raise FormatError(args.input, line_of[rec["question_id"]], None, str(e)) from None
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
