"""The `jlm` command line as a user meets it: --version, unknown commands, one-line errors with exit
status 2 for bad input, and Ctrl-C (a real signal to a real process) stopping with status 130 and
leaving output and checkpoints that a rerun continues from."""
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jlm
from jlm import cli
from jlm.interrupt import critical, guard

ROOT = Path(__file__).parent.parent


def one_error_line(capsys, prefix):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(prefix), err
    return err.strip()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pair(i):
    return {"question_id": i, "question_body": f"question {i}", "answer1_body": "yes", "answer2_body": "no"}


# ------------------------------------------------------------------------------------ commands
def test_version_and_unknown_command(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"jlm {jlm.__version__}\n"
    assert cli.main(["jduge", "--input", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jlm: unknown command 'jduge' (did you mean 'judge'?)\n")
    assert all(f"  {name} " in err for name in cli.COMMANDS)


# -------------------------------------------------------------------------------------- errors
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out.jsonl")
    cut = tmp_path / "cut.jsonl"
    line = '{"question_id": 2, "question_body": "q"'
    cut.write_text(json.dumps(pair(1)) + "\n" + line + "\n")
    assert cli.main(["judge", "--input", str(cut), "--output", out]) == 2
    assert one_error_line(capsys, "jlm judge: error: ") == \
        f"jlm judge: error: {cut}:2: invalid JSON (Expecting ',' delimiter, column {len(line) + 1} (end of line))"

    missing = write_jsonl(tmp_path / "missing.jsonl", [pair(1), {"question_id": 2, "question_body": "q",
                                                                  "answer1_body": "a"}])
    assert cli.main(["grade", "--input", str(missing), "--output", out]) == 2
    assert one_error_line(capsys, f"jlm grade: error: {missing}:2: field 'answer2_body': missing")

    assert cli.main(["judge", "--input", str(tmp_path / "nope.jsonl"), "--output", out]) == 2
    assert "nope.jsonl: No such file or directory" in one_error_line(capsys, "jlm judge: error: ")

    with pytest.raises(SystemExit) as e:  # a bad flag: argparse's usage line and exit status 2
        cli.main(["judge", "--input", str(missing), "--output", out, "--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size: must be at least 1" in capsys.readouterr().err

    with pytest.raises(FileNotFoundError):  # --debug: the traceback instead
        cli.main(["--debug", "judge", "--input", str(tmp_path / "nope.jsonl"), "--output", out])


def test_non_utf8_input_names_file_line_and_byte_offset(tmp_path, capsys):
    good = json.dumps({**pair(1), "text": "8 3\nok", "pred_text": "8 3"}).encode() + b"\n"
    bad = tmp_path / "latin1.jsonl"
    second = b'{"question_id": 2, "question_body": "caf\xe9"}\n'  # Latin-1, not UTF-8
    bad.write_bytes(good + second)
    where = f"{bad}:2: not UTF-8: byte 0xe9 at byte offset {len(good) + second.index(0xE9)} of the file"
    for argv in (["judge", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")],
                 ["grade", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")],
                 ["chat", "--input", str(bad)],
                 ["eval", "--gt", str(bad), "--pred", str(bad), "--out", str(tmp_path / "e")],
                 ["train", "--init", "random", "--model-shape", "llama-1b", "--train-data", str(bad),
                  "--out-dir", str(tmp_path / "run")]):
        assert cli.main(argv) == 2, argv
        assert where in one_error_line(capsys, f"jlm {argv[0]}: ")


def test_unsupported_checkpoint_is_one_line(tmp_path, capsys):
    model = tmp_path / "yarn"
    model.mkdir()
    for f in (ROOT / "tests/fixtures/tiny_mha").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
    inp = write_jsonl(tmp_path / "in.jsonl", [pair(1)])
    assert cli.main(["judge", "--model", str(model), "--input", str(inp), "--output", str(tmp_path / "o")]) == 2
    assert "rope_scaling type 'yarn' is not supported" in one_error_line(capsys, "jlm judge: error: ")
    assert cli.main(["convert", str(model), str(tmp_path / "hf")]) == 2
    assert "rope_scaling type 'yarn'" in one_error_line(capsys, "jlm convert: error: ")


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "boom", ("test_cli:_boom", ""))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])


def _boom(argv):
    return 1 / 0


# ------------------------------------------------------------------------------------- Ctrl-C
def _interrupted_in_a_gc_callback(argv):
    """A command during which Ctrl-C arrives while the garbage collector runs a callback (as JAX's
    does), then works on for a while: Python's own handler loses that interrupt."""
    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)
            for _ in range(100):  # Python code runs here, so the handler runs inside the callback
                pass

    fired = []
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return 0


def test_ctrl_c_in_a_gc_callback_still_stops_the_command(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "work", ("test_cli:_interrupted_in_a_gc_callback", ""))
    # a lost interrupt would let the command finish its 3 s of work and return 0 (no wall-clock bound:
    # gc.collect() in a busy test process can itself take seconds)
    assert cli.main(["work"]) == 130
    assert "jlm work: interrupted" in capsys.readouterr().err


def test_ctrl_c_waits_for_the_end_of_a_critical_section():
    done = []
    with guard(), pytest.raises(KeyboardInterrupt):
        with critical():
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.05)
            done.append("section finished")
        done.append("after the section")  # never reached: the interrupt is raised as the section ends
    assert done == ["section finished"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from flax import nnx

    from jlm.model.config import LlamaConfig
    from jlm.model.llama import Llama
    from jlm.model.load import save_pretrained
    d = tmp_path_factory.mktemp("model")
    cfg = LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=2048)
    save_pretrained(Llama(cfg, rngs=nnx.Rngs(0)), d, dtype="float32", tokenizer_src=ROOT / "tests/fixtures/tiny_sp")
    return d


def _jlm(*argv, env=None, **kw):
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, not conftest's eight
    return subprocess.Popen([sys.executable, "-m", "jlm.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**base, "JAX_PLATFORMS": "cpu", **(env or {})}, cwd=ROOT, **kw)


def _interrupt_when(proc, ready, timeout=60):
    """Send SIGINT once `ready()` holds; (returncode, stderr) of the stopped process."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t < 10  # promptly
    return proc.returncode, err.decode()


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_ctrl_c_stops_jlm_judge_with_130_and_a_rerun_finishes(tiny_model, tmp_path):
    n = 3000
    inp = write_jsonl(tmp_path / "in.jsonl", [dict(pair(i), question_body=f"question {i} " * (i % 7 + 1))
                                               for i in range(n)])
    out = tmp_path / "out.jsonl"
    argv = ["judge", "--model", tiny_model, "--input", inp, "--output", out, "--no-distributions", "--quiet",
            "--batch-size", "4"]
    rc, err = _interrupt_when(_jlm(*argv), lambda: len(_lines(out)) >= 8)
    assert rc == 130 and "jlm judge: interrupted" in err and "Traceback" not in err, err
    kept = [json.loads(x) for x in _lines(out)]  # every line whole (a cut one would not parse)
    assert 8 <= len(kept) < n
    proc = _jlm(*argv)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert [json.loads(x)["question_id"] for x in _lines(out)] == list(range(n))


def test_ctrl_c_stops_jlm_train_with_130_and_resume_continues(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [
        {**pair(i), "text": f"{i % 9 + 1} 3\nbecause", "score": [i % 9 + 1, 3]} for i in range(16)])
    run = tmp_path / "run"
    argv = ["train", "--model", tiny_model, "--train-data", data, "--max-steps", "60", "--global-batch", "4",
            "--seq-len", "1024", "--out-dir", run, "--no-progress", "--save-every", "2", "--no-plot",
            "--no-export", "--precision", "fp32", "--remat", "none"]
    rc, err = _interrupt_when(_jlm(*argv), lambda: len(_lines(run / "log.jsonl")) >= 3)
    assert rc == 130 and "jlm train: interrupted" in err and "Traceback" not in err, err
    saved = sorted((run / "checkpoints").iterdir())
    assert saved and all(p.name.isdigit() for p in saved), saved  # finished checkpoints only
    steps = [json.loads(x)["step"] for x in _lines(run / "log.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] < 60
    last = max(int(p.name) for p in saved)
    proc = _jlm(*argv, "--resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"resumed at step {last}" in out.decode(), err.decode()
    assert [json.loads(x)["step"] for x in _lines(run / "log.jsonl")] == list(range(1, 61))


def test_a_second_cli_run_compiles_nothing(tiny_model, tmp_path):
    """The persistent compilation cache: the first `jlm judge` fills it, a second identical run only
    reads it (no new entries), and JLM_COMPILATION_CACHE=0 keeps it off."""
    inp = write_jsonl(tmp_path / "in.jsonl", [pair(i) for i in range(6)])
    cache = tmp_path / "cache"
    env = {"JLM_COMPILATION_CACHE": "1", "JLM_CACHE_DIR": str(cache)}

    def run(out, **extra):
        p = _jlm("judge", "--model", tiny_model, "--input", inp, "--output", tmp_path / out, "--quiet",
                 env={**env, **extra})
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]

    def entries():
        return sorted(str(f.relative_to(cache)) for f in cache.rglob("*") if f.is_file())

    run("a.jsonl")
    first = entries()
    assert first and all(f.startswith(f"jlm{jlm.__version__}-jax") for f in first)  # one folder per version
    run("b.jsonl")
    assert entries() == first
    def judged(out):  # JudgeLM's pred_id and tstamp differ per run by design
        keep = ("question_id", "pred_text", "scores", "distribution")
        return [{k: r[k] for k in keep} for r in map(json.loads, _lines(tmp_path / out))]
    assert judged("a.jsonl") == judged("b.jsonl")
    run("c.jsonl", JLM_COMPILATION_CACHE="0", JLM_CACHE_DIR=str(tmp_path / "off"))
    assert not (tmp_path / "off").exists()
