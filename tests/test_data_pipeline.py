"""grain pipeline: batch layout, padded-with-buckets and packed modes, determinism, resumption."""
import numpy as np
import pytest

from jlm.data import (
    BATCH_KEYS,
    ByteTokenizer,
    EpochExamples,
    ExampleConfig,
    default_buckets,
    epoch_rng,
    make_example,
    train_dataset,
)
from jlm.formats.records import JudgeSample

TOK = ByteTokenizer()
CFG = ExampleConfig(max_len=1400)


def samples(n=24):
    return [JudgeSample(question_id=i, question=f"Question {i}?" + " more" * (i % 4),
                        answers=("a" * (10 + 23 * i % 200), "b" * (5 + 37 * i % 150)),
                        reference="ref" if i % 3 == 0 else None,
                        judgement=f"{i % 10} {9 - i % 10}\nAssistant 1 vs Assistant 2, item {i}.",
                        judgement_w_reference=f"{i % 10} 9\n\nwith reference {i}" if i % 3 == 0 else None)
            for i in range(n)]


def take(it, k):
    return [next(it) for _ in range(k)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in BATCH_KEYS)


def check_batch_invariants(b):
    assert set(b) == set(BATCH_KEYS)
    for k in ("input_ids", "targets", "segment_ids", "positions"):
        assert b[k].dtype == np.int32
    assert b["loss_mask"].dtype == np.float32
    shape = b["input_ids"].shape
    assert all(b[k].shape == shape for k in BATCH_KEYS)
    ids, tg, lm, seg, pos = (b[k] for k in BATCH_KEYS)
    # targets are next tokens of the same segment, 0 where there is none; no loss on padding or segment ends
    same_seg = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    assert np.array_equal(np.where(same_seg, ids[:, 1:], 0), tg[:, :-1])
    assert np.all(tg[:, -1] == 0)
    assert np.all(lm[~np.concatenate([same_seg, np.zeros((shape[0], 1), bool)], axis=1)] == 0)
    assert np.all(ids[seg == 0] == 0) and np.all(pos[seg == 0] == 0)
    # positions count up from 0 inside every segment
    for row in range(shape[0]):
        for s in np.unique(seg[row][seg[row] > 0]):
            assert np.array_equal(pos[row][seg[row] == s], np.arange(np.sum(seg[row] == s)))


def targets_of(b):
    """Decoded target text of every segment: tokens targets[t] where loss_mask[t] == 1."""
    out = []
    for row in range(b["input_ids"].shape[0]):
        for s in np.unique(b["segment_ids"][row][b["segment_ids"][row] > 0]):
            m = (b["segment_ids"][row] == s) & (b["loss_mask"][row] > 0)
            toks = b["targets"][row][m]
            assert toks[-1] == TOK.eos_id
            out.append(TOK.decode(toks))
    return out


def test_epoch_examples_cover_each_record_once_per_epoch():
    ds = EpochExamples(samples(), TOK, CFG, seed=3, num_epochs=2)
    assert len(ds) == 48
    recs = [ds.record_index(i) for i in range(48)]
    for e in (0, 1):
        assert sorted(r for ep, r in recs if ep == e) == list(range(24))
    assert [r for _, r in recs[:24]] != [r for _, r in recs[24:]]  # reshuffled each epoch
    ex = ds[5]
    epoch, rec = ds.record_index(5)
    want = make_example(samples()[rec], TOK, epoch_rng(3, epoch, rec), CFG)
    assert ex["input_ids"].tolist() == want["input_ids"]
    assert len(EpochExamples(samples(), TOK, CFG)) > 10**15  # endless


def test_padded_batches():
    ds = train_dataset(samples(), TOK, batch_size=4, config=CFG, num_epochs=1, window=3, seed=1,
                       buckets=(1100, 1200, 1400))
    batches = list(iter(ds))
    assert len(batches) == 6
    texts = []
    for b in batches:
        check_batch_invariants(b)
        lengths = (b["segment_ids"] > 0).sum(axis=1)
        assert b["input_ids"].shape[1] == min(x for x in (1100, 1200, 1400) if x >= lengths.max())
        assert set(np.unique(b["segment_ids"])) <= {0, 1}
        assert np.all(b["input_ids"][:, 0] == TOK.bos_id)
        texts += targets_of(b)
    # every record's target appears once (swapped or not)
    items = sorted(int(t.rsplit("item ", 1)[1].rstrip(".")) if "item" in t else int(t.rsplit(" ", 1)[1])
                   for t in texts)
    assert items == list(range(24))


def test_length_bucketing_groups_similar_lengths():
    ss = samples(48)
    ds = train_dataset(ss, TOK, batch_size=4, config=CFG, num_epochs=1, window=12, seed=0, shuffle=False,
                       buckets=(1400,))
    spreads = []
    for b in iter(ds):
        n = (b["segment_ids"] > 0).sum(axis=1)
        spreads.append(n.max() - n.min())
    lengths = np.array([len(EpochExamples(ss, TOK, CFG, shuffle=False)[i]["input_ids"]) for i in range(48)])
    assert max(spreads) < (lengths.max() - lengths.min()) / 2


@pytest.mark.parametrize("packing", [False, True])
def test_deterministic_and_resumable(packing):
    kw = dict(batch_size=3, config=CFG, seed=11, packing=packing, window=2, num_epochs=3,
              seq_len=2800 if packing else None)
    first = take(iter(train_dataset(samples(), TOK, **kw)), 6)
    again = take(iter(train_dataset(samples(), TOK, **kw)), 6)
    assert same(first, again)
    other = take(iter(train_dataset(samples(), TOK, **{**kw, "seed": 12})), 6)
    assert not same(first, other)

    it = iter(train_dataset(samples(), TOK, **kw))
    take(it, 4)
    state = it.get_state()
    expected = take(it, 5)
    resumed = iter(train_dataset(samples(), TOK, **kw))  # a fresh pipeline, as after a restart
    resumed.set_state(state)
    assert same(take(resumed, 5), expected)


def test_packed_batches():
    ds = train_dataset(samples(), TOK, batch_size=1, config=CFG, seq_len=4096, packing=True, num_epochs=1, seed=0)
    batches = list(iter(ds))
    texts = []
    for b in batches:
        assert b["input_ids"].shape == (1, 4096)
        check_batch_invariants(b)
        texts += targets_of(b)
    assert max(b["segment_ids"].max() for b in batches) >= 3  # several examples share a row
    assert len(batches) < 24
    items = sorted(int(t.rsplit("item ", 1)[1].rstrip(".")) if "item" in t else int(t.rsplit(" ", 1)[1])
                   for t in texts)
    assert items == list(range(24))  # batch size 1: nothing dropped, every example packed exactly once


def test_augmentation_is_redrawn_each_epoch():
    ds = EpochExamples(samples(), TOK, ExampleConfig(max_len=1400, swap_prob=0.5, ref_prob=0.0), seed=0,
                       num_epochs=4, shuffle=False)
    per_epoch = [[ds[e * 24 + i]["input_ids"].tolist() for i in range(24)] for e in range(4)]
    changed = sum(per_epoch[0][i] != per_epoch[1][i] for i in range(24))
    assert 0 < changed < 24


def test_errors():
    with pytest.raises(ValueError, match="exceeds seq_len"):
        train_dataset(samples(), TOK, batch_size=2, config=CFG, seq_len=1000)
    with pytest.raises(ValueError, match="largest bucket"):
        train_dataset(samples(), TOK, batch_size=2, config=CFG, buckets=(512,))
    with pytest.raises(ValueError, match="no samples"):
        EpochExamples([], TOK)
    assert default_buckets(2048) == (256, 512, 768, 1024, 1280, 1536, 1792, 2048)


def test_datasets_pickle_for_worker_processes():
    import pickle

    ex = EpochExamples(samples(), TOK, CFG, seed=2, num_epochs=1)
    ex.record_index(0)
    clone = pickle.loads(pickle.dumps(ex))
    assert clone[3]["input_ids"].tolist() == ex[3]["input_ids"].tolist()
    from jlm.data import BucketedBatches

    bb = BucketedBatches(ex, 4, buckets=(1400,), window=2, seed=2)
    first = bb[1]
    clone = pickle.loads(pickle.dumps(bb))
    assert same([clone[1]], [first])


def test_endless_run_crosses_epochs():
    ds = train_dataset(samples(), TOK, batch_size=5, config=CFG, seed=4, window=2)  # num_epochs=None
    it = iter(ds)
    batches = take(it, 12)  # 60 examples: 2.5 epochs of 24 records
    for b in batches:
        check_batch_invariants(b)
    state = it.get_state()
    nxt = take(it, 2)
    again = iter(train_dataset(samples(), TOK, batch_size=5, config=CFG, seed=4, window=2))
    again.set_state(state)
    assert same(take(again, 2), nxt)
