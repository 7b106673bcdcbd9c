"""Several processes, one JAX runtime (jax.distributed over 127.0.0.1, gloo): `jlm train` with FSDP
over 2 processes x 4 fake CPU devices equals 1 process x 8 devices, resumes exactly after one process
is killed (in the same layout and in the other), and `jlm judge` splits its samples over the
processes into one output. Bad set-ups stop every process with one clear line, within a bound.

Each process is a real `python -m jlm.cli` (tests/multihost.py starts them)."""
import dataclasses
import json
import shutil
import time

import numpy as np
import pytest
from flax import nnx

from multihost import check, launch
from test_train_run import ROOT, _judgelm_jsonl, _model_cfg, _samples

pytestmark = pytest.mark.multihost

STEPS = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random LLaMA checkpoint with a real SentencePiece tokenizer, and judge data for it."""
    from jlm.model.llama import Llama
    from jlm.model.load import save_pretrained

    d = tmp_path_factory.mktemp("multihost")
    cfg = dataclasses.replace(_model_cfg(500), max_position_embeddings=2048)  # JudgeLM prompts + reasons fit
    save_pretrained(Llama(cfg, rngs=nnx.Rngs(1)), d / "base", dtype="float32",
                    tokenizer_src=ROOT / "tests/fixtures/tiny_sp")
    _judgelm_jsonl(d / "train.jsonl", _samples() * 2)
    return d


def _train_argv(base, out, *extra):
    # full fine-tuning: FSDP shards every weight and optimizer state over all 8 devices, so each
    # process holds and checkpoints only its half
    return ["train", "--model", str(base / "base"), "--train-data", str(base / "train.jsonl"),
            "--out-dir", str(out), "--max-steps", str(STEPS), "--global-batch", "8", "--micro-batch", "8",
            "--seq-len", "512", "--precision", "fp32", "--lr", "3e-3", "--warmup-ratio", "0", "--save-every", "2",
            "--keep", "8", "--mesh-fsdp", "-1", "--no-progress", "--no-plot", "--no-export", "--seed", "3", *extra]


def _losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _logged_step(out) -> int:
    try:
        return max(_losses(out), default=0)
    except (OSError, json.JSONDecodeError):
        return 0


def test_training_over_two_processes_equals_one_and_resumes_exactly(base, tmp_path):
    one = tmp_path / "one"
    check(launch(_train_argv(base, one), processes=1, devices=8, timeout=300))
    ref = _losses(one)
    assert sorted(ref) == list(range(1, STEPS + 1))

    # 2 x 4: the same global batches, the same shardings over the same 8 devices
    two = tmp_path / "two"
    check(launch(_train_argv(base, two), processes=2, devices=4, timeout=300))
    got = _losses(two)
    np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=0, atol=1e-6)

    # one process dies mid-run (its partner is then stopped, as a launcher does) ...
    cut = tmp_path / "cut"
    runs = launch(_train_argv(base, cut), processes=2, devices=4, timeout=300,
                  kill=(1, lambda: _logged_step(cut) >= 3))
    assert runs[1].killed, "the run ended before the kill: " + runs[1].output[-2000:]
    saved = sorted(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < STEPS, saved
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(cut, elsewhere)

    # ... and the run resumes from the checkpoint both processes wrote, in the same layout ...
    check(launch(_train_argv(base, cut, "--resume"), processes=2, devices=4, timeout=300))
    got = _losses(cut)
    np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=0, atol=1e-6)

    # ... or in one process over all 8 devices (orbax reads the shards whoever wrote them)
    runs = check(launch(_train_argv(base, elsewhere, "--resume"), processes=1, devices=8, timeout=300))
    assert f"resumed at step {saved[-1]}" in runs[0].output
    got = _losses(elsewhere)
    np.testing.assert_allclose([got[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)], rtol=0, atol=1e-6)


def test_a_process_that_never_comes_stops_the_others_with_one_line(base, tmp_path):
    t = time.monotonic()
    # process 1 is told to expect a coordinator at another port: process 0 waits for it in vain
    runs = launch(_train_argv(base, tmp_path / "run", "--join-timeout", "8"), processes=2, devices=4, timeout=120,
                  per_process=lambda i: ["--coordinator", f"127.0.0.1:{1}"] if i == 1 else [], grace=60)
    assert time.monotonic() - t < 60
    for r in runs:
        assert r.returncode == 2 and not r.killed, r.output[-3000:]
        assert "could not join" in r.output and "within 8 s" in r.output, r.output[-3000:]


def test_processes_that_disagree_on_their_number_all_stop(base, tmp_path):
    # process 1 says 3 processes; the coordinator (process 0) says 2, and 2 join
    runs = launch(_train_argv(base, tmp_path / "run", "--join-timeout", "60"), processes=2, devices=4,
                  timeout=120, per_process=lambda i: ["--num-processes", "3"] if i == 1 else [])
    for r in runs:
        assert r.returncode == 2 and not r.killed, r.output[-3000:]
    assert "jlm train: error: --num-processes 3, but 2 processes joined" in runs[1].output
    assert "jlm train: error: process 1 failed checking --num-processes: DistributedError: --num-processes 3" \
        in runs[0].output


def test_a_data_file_missing_on_one_host_stops_every_host(base, tmp_path):
    missing = tmp_path / "not_here.jsonl"
    runs = launch(_train_argv(base, tmp_path / "run"), processes=2, devices=4, timeout=120,
                  per_process=lambda i: ["--train-data", str(missing)] if i == 1 else [])
    for r in runs:
        assert r.returncode == 2 and not r.killed, r.output[-3000:]
    assert f"jlm train: error: {missing}" in runs[1].output
    assert "jlm train: error: process 1 failed reading the model config and the training data: FileNotFoundError" in runs[0].output


def test_each_process_reads_its_own_rows_of_every_global_batch_and_resume_keeps_them():
    """The input pipeline by process (what `jlm train` does on each host): every host builds the same
    global batch stream and keeps its slice, so over an epoch every sample is read exactly once across
    the processes; a host resumed from its iterator state reads exactly the rows it would have."""
    from jlm.data import ExampleConfig, train_dataset
    from jlm.formats.records import JudgeSample
    from jlm.train.data import HostRows
    from test_train_run import _tokenizer

    samples = [JudgeSample(question_id=i, question=f"{s.question} ({i})", answers=s.answers,
                           judgement=s.judgement, scores=s.scores) for i, s in enumerate(_samples() * 4)]
    tok = _tokenizer(samples)

    def host(index, count, state=None):
        ds = train_dataset(samples, tok, batch_size=8, config=ExampleConfig(max_len=512, swap_prob=0.0, ref_prob=0.0),
                           seq_len=512, seed=5, num_epochs=1)
        it = HostRows(iter(ds), index, count)
        if state is not None:
            it.set_state(state)
        return it

    def rows(batch):
        return [r.tobytes() for r in batch["input_ids"]]

    glob = [rows(b) for b in host(0, 1)]
    assert len(glob) == len(samples) // 8
    parts = [[rows(b) for b in host(i, 2)] for i in range(2)]
    for step, whole in enumerate(glob):
        assert parts[0][step] + parts[1][step] == whole  # each row read by exactly one process
    read = [r for p in parts for b in p for r in b]
    assert len(read) == len(set(read)) == len(samples) // 8 * 8  # none twice, none skipped

    for i in range(2):
        it = host(i, 2)
        first = [rows(next(it)) for _ in range(1)]
        rest = [rows(b) for b in host(i, 2, it.get_state())]
        assert first + rest == parts[i]


def _judge_input(base) -> str:
    path = base / "pairs.jsonl"
    if not path.exists():
        rows = [{"question_id": f"q{i}", "question_body": f"{s.question} (case {i})", "answer1_body": s.answers[0],
                 "answer2_body": s.answers[1] * (1 + i % 3)} for i, s in enumerate(_samples() * 5)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _judged(path) -> list[dict]:
    keep = ("question_id", "pred_text", "scores", "verdict", "distribution")
    return [{k: r.get(k) for k in keep} for r in map(json.loads, path.read_text().splitlines())]


def test_judging_over_two_processes_writes_one_output_equal_to_one_process_and_resumes(base, tmp_path):
    argv = ["judge", "--model", str(base / "base"), "--input", _judge_input(base), "--batch-size", "2", "--quiet"]
    check(launch([*argv, "--output", str(tmp_path / "one.jsonl")], processes=1, devices=4, timeout=300))
    ref = _judged(tmp_path / "one.jsonl")
    assert [r["question_id"] for r in ref] == [f"q{i}" for i in range(30)]

    runs = check(launch([*argv, "--output", str(tmp_path / "two.jsonl")], processes=2, devices=4, timeout=300))
    assert "judging 15 samples" in runs[1].output
    assert _judged(tmp_path / "two.jsonl") == ref  # in input order, greedy: the same text and numbers
    assert not list(tmp_path.glob("two.jsonl.process*"))

    # What a run killed mid-way leaves (written here, not raced: a tiny judge ends its 15 samples within
    # one poll of the harness): each process's part holds some of its share in completion order,
    # process 1's ends in a cut line, and the output holds what an earlier run folded in.
    out = tmp_path / "cut.jsonl"
    lines = (tmp_path / "one.jsonl").read_text().splitlines(keepends=True)  # q0..q29, one per line
    out.write_text(lines[4])
    (tmp_path / "cut.jsonl.process0").write_text(lines[2] + lines[0])
    (tmp_path / "cut.jsonl.process1").write_text(lines[1] + lines[3][: len(lines[3]) // 2])
    runs = check(launch([*argv, "--output", str(out)], processes=2, devices=4, timeout=300))
    assert "resuming: 4 of 30 samples" in runs[0].output  # q0, q1, q2, q4; the cut q3 is judged again
    assert "judging 13 samples" in runs[1].output
    assert _judged(out) == ref
    assert not list(tmp_path.glob("cut.jsonl.process*"))


def test_an_input_missing_on_one_host_stops_every_judging_process(base, tmp_path):
    missing = tmp_path / "not_here.jsonl"
    runs = launch(["judge", "--model", str(base / "base"), "--input", _judge_input(base),
                   "--output", str(tmp_path / "out.jsonl")], processes=2, devices=4, timeout=120,
                  per_process=lambda i: ["--input", str(missing)] if i == 1 else [])
    for r in runs:
        assert r.returncode == 2 and not r.killed, r.output[-3000:]
    assert f"jlm judge: error: {missing}" in runs[1].output
    assert "jlm judge: error: process 1 failed reading the input: FileNotFoundError" in runs[0].output
    assert not (tmp_path / "out.jsonl").exists()
