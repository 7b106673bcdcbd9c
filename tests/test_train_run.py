"""`train()` end to end on CPU: a tiny judge overfits a few judge samples and then writes their score
lines; a run killed mid-way and resumed equals an uninterrupted one; `jlm train` config handling,
checkpoint loading, LoRA export."""
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jlm
from jlm.formats.prompts import build_prompt
from jlm.formats.records import JudgeSample
from jlm.model.config import LlamaConfig
from jlm.model.sharding import make_mesh
from jlm.train.config import PRESETS, TrainConfig, TrainConfigError, build_config, read_config_file
from jlm.train.data import judge_batches

ROOT = Path(__file__).parent.parent


class WordTokenizer:
    """Words (with their leading space), single digits and single other characters as tokens, over the
    vocabulary of the given texts. Judge prompts become ~250 tokens instead of ~1100 bytes, which keeps
    CPU training fast; prompt tokens are a prefix of prompt + judgement tokens (":" then a digit)."""

    PIECE = re.compile(r" ?[A-Za-z']+| ?\d|\s|[^\sA-Za-z\d']")
    pad_id, bos_id, eos_id = 0, 1, 2
    add_bos = True

    def __init__(self, texts):
        pieces = sorted({p for t in texts for p in self.PIECE.findall(t)})
        self.ids = {p: i + 3 for i, p in enumerate(pieces)}
        self.pieces = {i: p for p, i in self.ids.items()}
        self.vocab_size = len(pieces) + 3

    def encode(self, text, add_bos=None):
        ids = [self.ids[p] for p in self.PIECE.findall(text)]
        return [self.bos_id] + ids if (self.add_bos if add_bos is None else add_bos) else ids

    def decode(self, ids):
        return "".join(self.pieces.get(int(i), "") for i in ids)


QUESTIONS = [
    ("What is the capital of France?", "Paris.", "Lyon is the capital.", (9, 2)),
    ("Name a prime number above ten.", "Thirteen.", "Twelve.", (8, 1)),
    ("How many legs does a spider have?", "Six legs.", "Eight legs.", (3, 9)),
    ("Which planet is closest to the sun?", "Mercury.", "Venus, probably.", (7, 4)),
    ("What colour is a clear daytime sky?", "Blue.", "Green.", (10, 3)),
    ("Translate 'gato' from Spanish.", "Dog.", "Cat.", (2, 8)),
]


def _samples(n=None):
    out = []
    for i, (q, a1, a2, (s1, s2)) in enumerate(QUESTIONS if n is None else QUESTIONS[:n]):
        better = "Assistant 1" if s1 > s2 else "Assistant 2"
        text = f"{s1} {s2}\n{better} is correct and the other answer is not."
        out.append(JudgeSample(question_id=i, question=q, answers=(a1, a2), judgement=text, scores=(s1, s2)))
    return out


def _tokenizer(samples):
    texts = []
    for s in samples:
        texts += [build_prompt(s.question, s.answers), build_prompt(s.question, s.answers[::-1]), s.judgement]
    texts.append("0123456789 0 1 2 3 4 5 6 7 8 9 Assistant")  # digits with and without a space: swapped score lines
    return WordTokenizer(texts)


def _model_cfg(vocab):
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16, max_position_embeddings=512)


def _run_cfg(tmp_path, name, **kw):
    base = dict(init="random", precision="fp32", remat=None, seq_len=256, global_batch=8, micro_batch=8,
                lr=3e-3, warmup_ratio=0.0, schedule="constant", weight_decay=0.0, swap_prob=0.0, ref_prob=0.0,
                out_dir=str(tmp_path / name), progress=False, plot=False, export=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _greedy(model, tok, prompts, n_new):
    """Greedy continuation of each prompt (right-padded into one fixed shape: one compile)."""
    ids = [tok.encode(p) for p in prompts]
    length = max(len(x) for x in ids) + n_new
    buf = np.zeros((len(ids), length), np.int32)
    for r, x in enumerate(ids):
        buf[r, :len(x)] = x
    ends = np.array([len(x) for x in ids])
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits)
    for _ in range(n_new):  # causal: the padding after each prompt never affects its next token
        logits = np.asarray(fwd(state, jnp.asarray(buf)))
        buf[np.arange(len(ids)), ends] = logits[np.arange(len(ids)), ends - 1].argmax(-1)
        ends += 1
    return [tok.decode(buf[r, len(x):ends[r]]) for r, x in enumerate(ids)]


def test_tiny_judge_overfits_and_writes_the_score_lines(tmp_path):
    from jlm.train.trainer import train
    samples = _samples(4)
    tok = _tokenizer(samples)
    cfg = _run_cfg(tmp_path, "overfit", max_steps=80, save_every=1000, plot=True)
    one_device = make_mesh(1, 1, 1, devices=jax.devices()[:1])  # the sharded paths are tested elsewhere
    result = train(cfg, samples=samples, tokenizer=tok, model_cfg=_model_cfg(tok.vocab_size), mesh=one_device)
    losses = [r["loss"] for r in result.records]
    assert len(losses) == 80 and losses[0] > 2.0 and losses[-1] < 0.05, losses[::10]
    assert result.plot_path is not None and result.plot_path.exists()
    assert all(math.isfinite(r["grad_norm"]) and r["lr"] == pytest.approx(3e-3) for r in result.records)
    assert "tokens_per_s" in result.records[-1] and "tokens_per_s" not in result.records[0]  # compile excluded
    got = _greedy(result.model, tok, [build_prompt(s.question, s.answers) for s in samples], n_new=5)
    assert [g.partition("\n")[0] for g in got] == [f"{s.scores[0]} {s.scores[1]}" for s in samples], got
    assert all("\n" in g for g in got)  # and the score line ends there


class Killed(RuntimeError):
    pass


class KillAfter:
    """Batch iterator that dies when asked for batch number `n` (like a killed job)."""

    def __init__(self, it, n):
        self.it, self.n, self.seen = it, n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.seen == self.n:
            raise Killed(f"killed before batch {self.n}")
        self.seen += 1
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    from jlm.train.trainer import train
    samples = _samples()
    tok = _tokenizer(samples)
    mcfg = _model_cfg(tok.vocab_size)
    # augmentation on, so the resumed data stream must continue the random draws exactly
    kw = dict(max_steps=5, save_every=2, keep=2, swap_prob=0.5, lr=1e-3)
    full_cfg = _run_cfg(tmp_path, "full", **kw)
    full = train(full_cfg, batches=judge_batches(full_cfg, samples, tok), model_cfg=mcfg)

    cut_cfg = _run_cfg(tmp_path, "cut", **kw)
    with pytest.raises(Killed):
        # dies asking for batch 4: steps 1-3 ran, the last checkpoint is step 2, step 3 must be redone
        train(cut_cfg, batches=KillAfter(judge_batches(cut_cfg, samples, tok), 3), model_cfg=mcfg)
    ckpts = sorted(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [2]
    resumed = train(cut_cfg.replace(resume=True), batches=judge_batches(cut_cfg, samples, tok), model_cfg=mcfg)

    assert [r["step"] for r in resumed.records] == [1, 2, 3, 4, 5]
    for a, b in zip(full.records, resumed.records):
        assert (a["loss"], a["grad_norm"], a["lr"]) == (b["loss"], b["grad_norm"], b["lr"]), a["step"]
    for k, v in full.state.params.items():
        np.testing.assert_array_equal(np.asarray(resumed.state.params[k]), np.asarray(v), err_msg=k)
    assert int(resumed.state.step) == 5

    with pytest.raises(TrainConfigError, match="global_batch"):  # a resume must be the same run
        train(cut_cfg.replace(resume=True, global_batch=16, micro_batch=16),
              batches=judge_batches(cut_cfg, samples, tok), model_cfg=mcfg)


def _steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_damaged_latest_checkpoint_falls_back_and_a_cut_log_line_is_repaired(tmp_path, capsys):
    from jlm.train.trainer import train
    samples = _samples()
    tok = _tokenizer(samples)
    mcfg = _model_cfg(tok.vocab_size)
    cfg = _run_cfg(tmp_path, "run", max_steps=4, save_every=2, swap_prob=0.5)
    assert cfg.keep == 2  # the default: one to fall back to
    full = train(cfg, samples=samples, tokenizer=tok, model_cfg=mcfg)
    run = tmp_path / "run"
    assert _steps(run) == [2, 4]

    step4 = run / "checkpoints" / "4"
    biggest = max((f for f in step4.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    size = biggest.stat().st_size
    with open(biggest, "r+b") as f:
        f.truncate(size // 2)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a kill in the middle of a log line
    capsys.readouterr()
    again = train(cfg.replace(resume=True), samples=samples, tokenizer=tok, model_cfg=mcfg)
    said = capsys.readouterr().out
    assert f"checkpoint step 4 is damaged ({biggest} has {size // 2} of its {size} bytes); moved it to " in said
    assert "resumed at step 2" in said and "removed an incomplete last line (15 bytes)" in said
    assert (run / "checkpoints_damaged" / "4").is_dir() and _steps(run) == [2, 4]
    assert [(r["step"], r["loss"]) for r in again.records] == [(r["step"], r["loss"]) for r in full.records]

    (run / "checkpoints" / "4" / "data" / "metadata").unlink()  # the data-iterator state of the new step 4
    train(cfg.replace(resume=True), samples=samples, tokenizer=tok, model_cfg=mcfg)
    assert f"checkpoint step 4 is damaged ({run / 'checkpoints' / '4' / 'data' / 'metadata'} is missing)" in \
        capsys.readouterr().out


def test_an_earlier_run_is_not_overwritten_nor_resumed_with_another_shape(tmp_path):
    from jlm.train.trainer import train
    samples = _samples(2)
    tok = _tokenizer(samples)
    mcfg = _model_cfg(tok.vocab_size)
    cfg = _run_cfg(tmp_path, "run", max_steps=1, save_every=1, lora_rank=2, lora_alpha=4.0)
    train(cfg, samples=samples, tokenizer=tok, model_cfg=mcfg)
    with pytest.raises(TrainConfigError, match=r"holds the checkpoints of an earlier run \(up to step 1\): "
                                               "pass --resume"):
        train(cfg, samples=samples, tokenizer=tok, model_cfg=mcfg)
    with pytest.raises(TrainConfigError, match=r"was made with lora_rank=2 \(this run 4\)"):
        train(cfg.replace(resume=True, lora_rank=4), samples=samples, tokenizer=tok, model_cfg=mcfg)


def _judgelm_jsonl(path, samples):
    with open(path, "w") as f:
        for s in samples:
            f.write(json.dumps({"question_id": s.question_id, "question_body": s.question,
                                "answer1_body": s.answers[0], "answer2_body": s.answers[1],
                                "text": s.judgement, "score": list(s.scores)}) + "\n")


def test_jlm_train_cli_lora_from_checkpoint_and_merged_export(tmp_path):
    """The CLI path: a config file + flags, an HF checkpoint and its tokenizer, JudgeLM JSONL, LoRA,
    orbax checkpoints, an export whose (merged) weights give the trained model's logits, and the
    PEFT adapter beside it."""
    from jlm.model.llama import Llama
    from jlm.model.load import hf_tensors, load_model, save_pretrained
    from jlm.train.cli import main, resolve
    from jlm.train.trainer import train

    base = Llama(_model_cfg(500), rngs=nnx.Rngs(1))  # tests/fixtures/tiny_sp has 500 pieces
    save_pretrained(base, tmp_path / "base", dtype="float32", tokenizer_src=ROOT / "tests/fixtures/tiny_sp")
    data = tmp_path / "train.jsonl"
    _judgelm_jsonl(data, _samples())
    conf = tmp_path / "run.yaml"
    conf.write_text(f"preset: smollm2-135m\nmodel: {tmp_path / 'base'}\ntrain_data: [{data}]\n"
                    f"out_dir: {tmp_path / 'run'}\nlora_rank: 4\nseq_len: 512\n")
    argv = ["--config", str(conf), "--global-batch", "8", "--micro-batch", "8", "--max-steps", "3",
            "--save-every", "2", "--precision", "fp32", "--lr", "1e-2", "--warmup-ratio", "0", "--no-progress",
            "--export-dtype", "float32"]
    assert main(argv + ["--print-config"]) == 0
    cfg, _ = resolve(argv)
    assert (cfg.lora_rank, cfg.global_batch, cfg.remat, cfg.model) == (4, 8, None, str(tmp_path / "base"))
    result = train(cfg)
    assert [r["step"] for r in result.records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in result.records)
    # the preset's keep=1, but two are always kept: a damaged latest one has one to fall back to
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    assert (tmp_path / "run" / "loss.png").exists()

    # resuming the finished LoRA run restores the adapters and rebuilds the frozen base from --model
    again = train(cfg.replace(resume=True, export=False, plot=False))
    assert [r["loss"] for r in again.records] == [r["loss"] for r in result.records]
    for k, v in result.state.params.items():
        np.testing.assert_array_equal(np.asarray(again.state.params[k]), np.asarray(v), err_msg=k)
    for k, v in result.state.frozen.items():
        np.testing.assert_array_equal(np.asarray(again.state.frozen[k]), np.asarray(v), err_msg=k)

    exported, _ = load_model(result.export_dir)  # no adapters: they were merged into the weights
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 500, (2, 24)), jnp.int32)
    trained = result.model
    np.testing.assert_allclose(np.asarray(exported(ids).logits), np.asarray(trained(ids).logits), atol=2e-4)
    assert np.abs(np.asarray(base(ids).logits) - np.asarray(trained(ids).logits)).max() > 1e-3

    # the adapters alone, as a PEFT adapter naming the base as given: they load (model and, through
    # the base, tokenizer) into the merged export's weights
    conf = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (conf["base_model_name_or_path"], conf["r"], conf["lora_alpha"]) == (str(tmp_path / "base"), 4, 32)  # the preset's alpha
    merged = dict(hf_tensors(exported))
    for name, w in hf_tensors(load_model(result.adapter_dir)[0]):
        np.testing.assert_allclose(w, merged[name], atol=1e-6, err_msg=name)
    judge = jlm.Judge.load(result.adapter_dir)
    text = "Assistant 1 is better."
    assert judge.tokenizer.encode(text) == jlm.load_tokenizer(tmp_path / "base").encode(text)
    assert judge.cfg == exported.cfg


def test_config_layers_and_errors(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "judgelm-13b", "lr": 3e-5, "train_data": "a.jsonl"}))
    cfg = build_config(file_values=read_config_file(f), overrides={"lr": 1e-5, "lora_rank": 8})
    assert (cfg.model_shape, cfg.global_batch, cfg.lr, cfg.lora_rank, cfg.train_data) == \
        ("judgelm-13b", 128, 1e-5, 8, ("a.jsonl",))
    with pytest.raises(TrainConfigError, match="unknown field 'lr_rate'"):
        build_config(file_values={"lr_rate": 1})
    with pytest.raises(TrainConfigError, match="global_batch"):
        build_config(overrides={"global_batch": "many"})
    with pytest.raises(TrainConfigError, match="remat"):
        build_config(overrides={"remat": "everything"})
    with pytest.raises(TrainConfigError, match="no base model"):
        from jlm.train.state import model_config
        model_config(build_config(preset="judgelm-7b"))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_resolve(path):
    raw = read_config_file(path)
    cfg = build_config(file_values=raw, source=str(path))
    assert cfg.global_batch > 0 and (cfg.model or cfg.model_shape)


def test_presets_reproduce_judgelm_recipe():
    for name in ("judgelm-7b", "judgelm-13b", "judgelm-33b"):
        c = build_config(preset=name)
        assert (c.global_batch, c.lr, c.warmup_ratio, c.schedule, c.epochs, c.weight_decay) == \
            (128, 2e-5, 0.03, "cosine", 3.0, 0.0)
        assert (c.b1, c.b2, c.eps, c.clip_norm, c.seq_len, c.weighting) == (0.9, 0.999, 1e-8, 1.0, 2048, "sample")
        assert (c.swap_prob, c.ref_prob, c.remat, c.packing) == (0.5, 0.5, "nothing_saveable", False)
    assert set(PRESETS) >= {"judgelm-7b", "judgelm-13b", "judgelm-33b", "smollm2-135m"}
