"""Readers (with schema validation) and writers for judge data: JudgeLM JSONL, PandaLM test JSON, Auto-J pairwise.

Every reader returns a `SampleList` of `JudgeSample`s; `SampleList.dropped` counts the records left out
and why ("error": GPT-4 judgement "error", "no_majority": PandaLM annotators all differ, ...).
Any schema problem raises `FormatError`, which names the file, the line and the field.

Companion files (GPT-4 judgements, references) are aligned with the main file by `question_id`, not by line
position as JudgeLM does; a missing, extra or duplicated id is an error.
Files ending in ".gz" are read through gzip.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jlm.formats.scores import parse_scores

QuestionId = int | str


class FormatError(ValueError):
    """A record that does not follow its schema: `path:line: field 'name': message`."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True)
class Item:
    """One thing to judge, as `Judge.score` takes it: a question and its answers (answer 1 is the
    reference in "single" mode). A JudgeSample, a JudgeLM record or a tuple are read into one."""
    question: str
    answers: tuple[str, ...]
    reference: str | None = None
    question_id: Any = None


@dataclass(frozen=True)
class JudgeSample:
    """One judge item: a question, N answers and what is known about which is better.

    `judgement` / `scores` are the teacher's judgement without reference (JudgeLM `text` / `score`);
    `judgement_w_reference` / `scores_w_reference` the one made while seeing `reference`.
    `judgement_needs_reference` marks a `judgement` that was itself written with the reference in view
    (training then always shows the reference). `label` is a human verdict: 1 (answer 1 better), -1
    (answer 2 better), 0 (tie). `extra` keeps every other field of the source record, passed through.
    """

    question_id: QuestionId
    question: str
    answers: tuple[str, ...]
    reference: str | None = None
    judgement: str | None = None
    scores: tuple[float, ...] | None = None
    judgement_w_reference: str | None = None
    scores_w_reference: tuple[float, ...] | None = None
    judgement_needs_reference: bool = False
    label: int | None = None
    answer_ids: tuple[str, ...] = ()
    model_ids: tuple[str, ...] = ()
    answer_metadata: tuple[Any, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> JudgeSample:
        return dataclasses.replace(self, **changes)


class SampleList(list):
    """A list of `JudgeSample`s plus `dropped`: a Counter of the records left out, by reason."""

    def __init__(self, items: Iterable[JudgeSample] = (), dropped: Mapping[str, int] | None = None):
        super().__init__(items)
        self.dropped: Counter[str] = Counter(dropped or {})


# ----------------------------------------------------------------------------------------------- low level

def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file for reading, through gzip when the name ends in ".gz"."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_bytes(path: str | Path):
    path = Path(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _not_utf8(path: str | Path, data: bytes, start: int, offset: int, line: int) -> FormatError:
    """The error for an undecodable byte at data[start], `offset` bytes into the file."""
    return FormatError(path, line, None, f"not UTF-8: byte 0x{data[start]:02x} at byte offset {offset} of the file; "
                       "save the file as UTF-8")


def drop_partial_last_line(path: str | Path) -> int:
    """Cut a JSONL file back to its last newline, where a kill mid-write leaves a partial record;
    the number of bytes removed (0 when the file ends whole)."""
    data = Path(path).read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return len(data) - end


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; anything but a JSON object is a FormatError.

    Lines end at "\n" only, as `wc -l` and `sed -n` count them (a stray "\r" inside a line does not
    start a new one), and JSON error columns count characters from the start of that line."""
    offset = 0  # bytes before this line, for the position of a byte that is not UTF-8
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, raw, e.start, offset + e.start, lineno) from None
            offset += len(raw)
            line = line.rstrip("\r\n")  # else an error at the line's end is reported as column 1 of "line 2"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(path, lineno, None, f"invalid JSON ({e.msg}, column {e.pos + 1}"
                                  f"{' (end of line)' if e.pos >= len(line) else ''})") from None
            if not isinstance(obj, dict):
                raise FormatError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def iter_json_array(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number where the item starts, object) for every item of a JSON array of objects."""
    with _open_bytes(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data, e.start, e.start, data.count(b"\n", 0, e.start) + 1) from None
    text = text.replace("\r\n", "\n")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise FormatError(path, _line_of(text, pos), None, "expected a JSON array")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = _line_of(text, pos)
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise FormatError(path, e.lineno, None, f"invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise FormatError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
        yield line, obj
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise FormatError(path, _line_of(text, pos), None, "expected ',' or ']' in JSON array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records one JSON object a line (UTF-8, non-ASCII kept); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


class _Fields:
    """Typed access to one record's fields; every failure names file, line and field."""

    def __init__(self, path: str | Path, line: int, obj: dict):
        self.path, self.line, self.obj = path, line, obj

    def error(self, name: str | None, message: str) -> FormatError:
        return FormatError(self.path, self.line, name, message)

    def has(self, name: str) -> bool:
        return self.obj.get(name) is not None

    def str(self, name: str, *, required: bool = True) -> str | None:
        if name not in self.obj or self.obj[name] is None:
            if required:
                raise self.error(name, "missing")
            return None
        v = self.obj[name]
        if not isinstance(v, str):
            raise self.error(name, f"expected a string, got {type(v).__name__}")
        return v

    def int(self, name: str, allowed: Iterable[int] | None = None) -> int:
        v = self.obj.get(name)
        if v is None:
            raise self.error(name, "missing")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(name, f"expected an integer, got {v!r}")
        if allowed is not None and v not in allowed:
            raise self.error(name, f"{v!r} is not one of {sorted(allowed)}")
        return v

    def question_id(self, name: str = "question_id") -> QuestionId:
        v = self.obj.get(name)
        if v is None:
            raise self.error(name, "missing")
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise self.error(name, f"expected an integer or string id, got {v!r}")
        return v

    def id_str(self, name: str) -> str:
        v = self.obj.get(name)
        if v is None:
            return ""
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise self.error(name, f"expected a string id, got {v!r}")
        return str(v)

    def scores(self, name: str, n: int) -> tuple[float, ...] | None:
        v = self.obj.get(name)
        if v is None:
            return None
        if (not isinstance(v, list) or len(v) != n
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise self.error(name, f"expected a list of {n} numbers, got {v!r}")
        return tuple(float(x) for x in v)

    def reference(self, name: str = "reference") -> str | None:
        """JudgeLM's `{"text": ...}` dict, a bare string, or null/absent."""
        v = self.obj.get(name)
        if v is None:
            return None
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            t = v.get("text")
            if not isinstance(t, str):
                raise self.error(f"{name}.text", f"expected a string, got {t!r}")
            return t
        raise self.error(name, f"expected {{'text': ...}}, a string or null, got {type(v).__name__}")


# ----------------------------------------------------------------------------------------------- JudgeLM

_JUDGELM_FIELDS = {
    "question_id", "question_body", "text", "score", "reference", "text_w_reference", "score_w_reference",
}


def _answer_count(f: _Fields) -> int:
    n = 0
    while f"answer{n + 1}_body" in f.obj:
        n += 1
    if n < 2:
        raise f.error(f"answer{n + 1}_body", "missing (a judge sample needs at least 2 answers)")
    return n


def _judgement(f: _Fields, name: str, n: int, strict: bool) -> str | None:
    """The judgement text; "error" is returned as is, an unparseable score line is a FormatError if strict."""
    text = f.str(name, required=False)
    if text is None or text == "error":
        return text
    if parse_scores(text, n) is None:
        if strict:
            first = text.split("\n")[0]
            raise f.error(name, f"first line {first[:60]!r} is not {n} scores separated by a space")
        return "unparseable"
    return text


def _sample_from_judgelm(f: _Fields, strict: bool,
                         companions: Mapping[str, _Fields]) -> tuple[JudgeSample | None, list[str]]:
    """(sample or None, drop reasons); `companions` maps a field kind to the companion record supplying it."""
    qid = f.question_id()
    n = _answer_count(f)
    answers = tuple(f.str(f"answer{k}_body") for k in range(1, n + 1))
    src = companions.get("text", f)
    text = _judgement(src, "text", n, strict)
    if text in ("error", "unparseable"):
        return None, [text]
    reasons = []
    src_w = companions.get("text_w_reference", f)
    name_w = "text" if src_w is not f else "text_w_reference"  # companion files store it under `text`
    text_w_ref = _judgement(src_w, name_w, n, strict)
    if text_w_ref in ("error", "unparseable"):
        reasons.append(text_w_ref + "_w_reference")  # the sample stays; only its with-reference variant goes
        text_w_ref = None
    scores_w_ref = src_w.scores("score" if src_w is not f else "score_w_reference", n) if text_w_ref else None
    ref_src = companions.get("reference", f)
    metadata = f.obj.get("metadata")
    needs_ref = bool(metadata.get("text_uses_reference")) if isinstance(metadata, dict) else False
    answer_keys = {f"answer{k}_{s}" for k in range(1, n + 1) for s in ("body", "id", "model_id", "metadata")}
    sample = JudgeSample(
        question_id=qid,
        question=f.str("question_body"),
        answers=answers,
        reference=ref_src.reference(),
        judgement=text,
        scores=src.scores("score", n),
        judgement_w_reference=text_w_ref,
        scores_w_reference=scores_w_ref,
        judgement_needs_reference=needs_ref,
        answer_ids=tuple(f.id_str(f"answer{k}_id") for k in range(1, n + 1)),
        model_ids=tuple(f.id_str(f"answer{k}_model_id") for k in range(1, n + 1)),
        answer_metadata=tuple(f.obj.get(f"answer{k}_metadata") for k in range(1, n + 1)),
        extra={k: v for k, v in f.obj.items() if k not in _JUDGELM_FIELDS and k not in answer_keys},
    )
    if needs_ref and sample.reference is None:
        raise f.error("reference", "metadata.text_uses_reference is set but the record has no reference")
    return sample, reasons


def read_judgelm(
    path: str | Path,
    *,
    gpt4: str | Path | None = None,
    gpt4_w_reference: str | Path | None = None,
    references: str | Path | None = None,
    strict: bool = True,
) -> SampleList:
    """JudgeLM train/val JSONL (`question_body`, `answer{k}_body`, optional `text`, `score`, `reference` ...).

    Companions, each aligned by `question_id`: `gpt4` (lines with `text`, optional `score`: the judgement
    without reference, replacing the main file's), `gpt4_w_reference` (lines with `text`, optional `score`:
    the with-reference judgement), `references` (lines with `reference` = {"text": ...}, a string or null).
    Records whose judgement is "error" are dropped and counted (`dropped["error"]`); an erroneous
    with-reference judgement only loses that variant (`dropped["error_w_reference"]`). A score line that
    does not parse is a FormatError, or with strict=False a drop counted as "unparseable".
    """
    records = [_Fields(path, line, obj) for line, obj in iter_jsonl(path)]
    kinds = {"text": gpt4, "text_w_reference": gpt4_w_reference, "reference": references}
    companions: dict[str, dict[QuestionId, _Fields]] = {}
    if any(v is not None for v in kinds.values()):
        main_lines: dict[QuestionId, int] = {}
        for f in records:
            qid = f.question_id()
            if qid in main_lines:
                raise FormatError(path, f.line, "question_id", f"duplicate id {qid!r} (first on line "
                                  f"{main_lines[qid]}); companion files are aligned by question_id")
            main_lines[qid] = f.line
        for kind, companion in kinds.items():
            if companion is not None:
                companions[kind] = _read_companion(companion, "reference" if kind == "reference" else "text",
                                                   path, main_lines)
    out = SampleList()
    for f in records:
        qid = f.question_id()
        sample, reasons = _sample_from_judgelm(f, strict, {k: rows[qid] for k, rows in companions.items()})
        out.dropped.update(reasons)
        if sample is not None:
            out.append(sample)
    return out


def _read_companion(path: str | Path, field: str, main_path: str | Path,
                    main_lines: Mapping[QuestionId, int]) -> dict[QuestionId, _Fields]:
    """qid -> record of a companion file holding `field`, checked one-to-one against the main file's ids."""
    rows: dict[QuestionId, _Fields] = {}
    for line, obj in iter_jsonl(path):
        f = _Fields(path, line, obj)
        qid = f.question_id()
        if qid in rows:
            raise FormatError(path, line, "question_id", f"duplicate id {qid!r} (first on line {rows[qid].line})")
        if qid not in main_lines:
            raise FormatError(path, line, "question_id", f"id {qid!r} is not in {main_path}")
        if field == "text":
            f.str("text")  # required, a string
        elif field not in obj:
            raise f.error(field, "missing (null for none)")
        rows[qid] = f
    for qid, line in main_lines.items():
        if qid not in rows:
            raise FormatError(main_path, line, "question_id", f"id {qid!r} has no line in {path}")
    return rows


def to_judgelm_record(s: JudgeSample) -> dict[str, Any]:
    """A JudgeSample as a JudgeLM JSONL record (inverse of `read_judgelm` for its fields)."""
    r: dict[str, Any] = {"question_id": s.question_id, "question_body": s.question}
    for k, a in enumerate(s.answers, start=1):
        r[f"answer{k}_body"] = a
        if s.answer_ids:
            r[f"answer{k}_id"] = s.answer_ids[k - 1]
        if s.model_ids:
            r[f"answer{k}_model_id"] = s.model_ids[k - 1]
        if s.answer_metadata and s.answer_metadata[k - 1] is not None:
            r[f"answer{k}_metadata"] = s.answer_metadata[k - 1]
    if s.judgement is not None:
        r["text"] = s.judgement
    if s.scores is not None:
        r["score"] = list(s.scores)
    if s.reference is not None:
        r["reference"] = {"text": s.reference}
    if s.judgement_w_reference is not None:
        r["text_w_reference"] = s.judgement_w_reference
    if s.scores_w_reference is not None:
        r["score_w_reference"] = list(s.scores_w_reference)
    for k, v in s.extra.items():
        r.setdefault(k, v)
    if s.judgement_needs_reference:
        meta = dict(r.get("metadata") or {})
        meta["text_uses_reference"] = True
        r["metadata"] = meta
    return r


# ----------------------------------------------------------------------------------------------- keyed files

@dataclass(frozen=True)
class Keyed:
    """Records of a JSONL file keyed by an id field, with the line each came from."""

    path: str
    records: dict[QuestionId, dict]
    lines: dict[QuestionId, int]

    def __len__(self) -> int:
        return len(self.records)


def read_keyed(path: str | Path, field: str, *, id_field: str = "question_id") -> Keyed:
    """JSONL records keyed by `id_field`, each required to hold a string `field` (e.g. `pred_text`, `text`).

    Used for JudgeLM judgement files (teacher `text`, judge `pred_text`); duplicated ids are an error
    (JudgeLM's own output is sorted and de-duplicated by question_id).
    """
    records: dict[QuestionId, dict] = {}
    lines: dict[QuestionId, int] = {}
    for line, obj in iter_jsonl(path):
        f = _Fields(path, line, obj)
        qid = f.question_id(id_field)
        f.str(field)
        if qid in records:
            raise FormatError(path, line, id_field, f"duplicate id {qid!r} (first on line {lines[qid]})")
        records[qid], lines[qid] = obj, line
    return Keyed(str(path), records, lines)


def check_aligned(reference: Keyed, other: Keyed, *, id_field: str = "question_id") -> None:
    """FormatError unless both files hold exactly the same ids (the error points at the first stray line)."""
    for qid, line in other.lines.items():
        if qid not in reference.records:
            raise FormatError(other.path, line, id_field, f"id {qid!r} is not in {reference.path}")
    for qid, line in reference.lines.items():
        if qid not in other.records:
            raise FormatError(reference.path, line, id_field, f"id {qid!r} has no line in {other.path}")


# ----------------------------------------------------------------------------------------------- PandaLM

PANDALM_LABELS = {1: 1, 2: -1, 0: 0}  # PandaLM annotator value -> win label


def pandalm_majority(votes: Iterable[int]) -> int | None:
    """Majority of PandaLM annotator votes (1, 2, 0 = tie) as a win label, None if no value has a majority."""
    votes = list(votes)
    value, count = Counter(votes).most_common(1)[0]
    return PANDALM_LABELS[value] if count * 2 > len(votes) else None


def read_pandalm(path: str | Path) -> SampleList:
    """PandaLM test set JSON (`idx`, `instruction`, `input`, `response1`, `response2`, `annotator1..3`).

    question = instruction, plus "\\n" + input when the input is not empty; label = the annotators'
    majority (1 -> 1, 2 -> -1, 0 -> tie 0); rows without a majority are dropped ("no_majority").
    """
    out = SampleList()
    for line, obj in iter_json_array(path):
        f = _Fields(path, line, obj)
        idx = f.int("idx")
        instruction, input_ = f.str("instruction"), f.str("input", required=False) or ""
        votes = [f.int(f"annotator{k}", allowed=PANDALM_LABELS) for k in (1, 2, 3)]
        label = pandalm_majority(votes)
        if label is None:
            out.dropped["no_majority"] += 1
            continue
        cmp_key = f.str("cmp_key", required=False)
        models = tuple(cmp_key.split("_", 1)) if cmp_key and "_" in cmp_key else ()
        out.append(JudgeSample(
            question_id=idx,
            question=instruction + ("\n" + input_ if input_ else ""),
            answers=(f.str("response1"), f.str("response2")),
            label=label,
            model_ids=models,
            extra={k: v for k, v in obj.items()
                   if k not in ("idx", "instruction", "input", "response1", "response2")},
        ))
    return out


# ----------------------------------------------------------------------------------------------- Auto-J

AUTOJ_LABELS = {0: 1, 1: -1, 2: 0}  # Auto-J label (0 = response 1 better, 1 = response 2, 2 = tie) -> win label


def read_autoj_pairwise(path: str | Path) -> SampleList:
    """Auto-J pairwise test JSONL (`scenario`, `label`, `prompt`, `response 1`, `response 2`).

    The file has no ids: question_id is the 0-based index of the record. label: 0 -> 1, 1 -> -1, 2 -> tie 0.
    """
    out = SampleList()
    for index, (line, obj) in enumerate(iter_jsonl(path)):
        f = _Fields(path, line, obj)
        out.append(JudgeSample(
            question_id=index,
            question=f.str("prompt"),
            answers=(f.str("response 1"), f.str("response 2")),
            label=AUTOJ_LABELS[f.int("label", allowed=AUTOJ_LABELS)],
            extra={"scenario": f.str("scenario", required=False)},
        ))
    return out
