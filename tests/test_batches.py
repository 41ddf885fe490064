"""Training batches: causal shifted targets, windows, masked-item sampling, padding to the batch."""

import numpy as np

from seqrec.data.store import SequenceStore
from seqrec.training.batches import POOL_BATCHES, causal_batch, epoch_order, history_csr, make_windows, masked_batch


def store():
    return SequenceStore.from_lists([[1, 2, 3, 4, 5], [6, 7], [8], [9, 10, 11]])


def test_causal_batch_shifts_and_pads_to_batch_longest():
    s = store()
    win = make_windows(s, span=4, stride=None, min_len=2)
    assert win.rows.tolist() == [0, 1, 3]  # the 1-item row has nothing to predict
    inputs, targets = causal_batch(s, win, np.arange(3))
    # span 4 = 3 inputs + 3 targets from the last 4 items of the longest row
    assert inputs.tolist() == [[2, 3, 4], [0, 0, 6], [0, 9, 10]]
    assert targets.tolist() == [[3, 4, 5], [0, 0, 7], [0, 10, 11]]
    short, _ = causal_batch(s, win, np.array([1]))
    assert short.shape == (1, 1)  # padded to its own longest, not to max_len


def test_sliding_windows_cover_long_history():
    s = SequenceStore.from_lists([list(range(1, 11))])
    win = make_windows(s, span=4, stride=3, min_len=2)
    got = [s.items[a:b].tolist() for a, b in zip(win.starts, win.ends, strict=True)]
    assert got == [[7, 8, 9, 10], [4, 5, 6, 7], [1, 2, 3, 4]]  # the earliest items are trained on too


def test_masked_batch_masks_only_real_positions_and_at_least_one():
    s = store()
    win = make_windows(s, span=5, stride=None, min_len=1)
    rng = np.random.default_rng(0)
    inputs, targets = masked_batch(s, win, np.arange(len(win)), mask_prob=0.3, mask_token=99, rng=rng)
    seq = np.where(targets > 0, targets, inputs)
    assert ((inputs == 99) == (targets > 0)).all()
    assert (targets[seq == 0] == 0).all()  # padding never masked
    assert ((targets > 0).sum(axis=1) >= 1).all()


def test_history_csr_is_catalog_space():
    offs, items = history_csr(store(), np.array([1, 3]))
    assert offs.tolist() == [0, 2, 5] and items.tolist() == [5, 6, 8, 9, 10]


def test_padded_tail_matches_python_reference():
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(1, 50, size=rng.integers(0, 9))) for _ in range(30)]
    s = SequenceStore.from_lists(rows)
    sel = rng.permutation(30)[:17]
    got = s.padded_tail(sel, 5)
    width = max(1, max(min(len(rows[i]), 5) for i in sel))
    for r, i in zip(got, sel, strict=True):
        tail = rows[i][-5:] if rows[i] else []
        assert r.tolist() == [0] * (width - len(tail)) + [int(x) for x in tail]


def test_epoch_order_is_a_permutation_with_full_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    B = 32
    plain = epoch_order(np.random.default_rng(1), lengths, B, group_by_length=False)
    grouped = epoch_order(np.random.default_rng(1), lengths, B, group_by_length=True)
    for order in (plain, grouped):
        assert sorted(order.tolist()) == list(range(1000))

    def padded(order):  # positions computed when every batch pads to its longest
        return sum(lengths[order[i:i + B]].max() * len(order[i:i + B]) for i in range(0, len(order), B))

    assert padded(grouped) < 0.7 * padded(plain)
    # batches are not simply the sorted order: the pools shuffle and the batch order is random
    firsts = lengths[grouped[:-(1000 % B)].reshape(-1, B)[:, 0]]
    assert not np.all(np.diff(firsts) >= 0)
    # inside a full batch lengths come from one sorted pool: the spread is a fraction of the range
    full = grouped[:1000 // B * B].reshape(-1, B)
    spread = np.ptp(lengths[full], axis=1)
    assert np.median(spread) < 200 / POOL_BATCHES * 2


def test_epoch_order_is_seeded():
    lengths = np.arange(500) % 37
    a = epoch_order(np.random.default_rng(5), lengths, 16, True)
    b = epoch_order(np.random.default_rng(5), lengths, 16, True)
    c = epoch_order(np.random.default_rng(6), lengths, 16, True)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
