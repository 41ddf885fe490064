"""The chunked top-k that SCE's bucket selection runs on: exact, ties by the lower index."""

import pytest
import torch

from seqrec.losses.kernels import topk_rows_chunked


def _reference(q: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    s = q @ keys.T  # small integers: exact in float32 whatever the blocking, and full of ties
    return s.argsort(dim=1, descending=True, stable=True)[:, :k]


@pytest.mark.parametrize("m, n_keys, k, chunk", [(7, 1000, 5, 64), (40, 5000, 64, None), (3, 10, 10, 4),
                                                 (5, 300, 7, 7), (16, 20000, 256, 512)])
@pytest.mark.parametrize("order", ["random", "rising", "falling"])
def test_topk_rows_chunked_is_exact_with_ties_by_lower_index(m, n_keys, k, chunk, order):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-3, 4, (m, 8), generator=g).float()
    keys = torch.randint(-3, 4, (n_keys, 8), generator=g).float()
    if order != "random":  # every chunk beats the running thresholds (rising), or none does (falling)
        keys = keys[(q[0] @ keys.T).argsort(descending=order == "falling", stable=True)]
    assert torch.equal(topk_rows_chunked(q, keys, k, chunk=chunk), _reference(q, keys, k))


@pytest.mark.parametrize("m, n, k", [(5, 1003, 40), (9, 4096, 256), (3, 100, 90), (4, 77, 1)])
def test_kth_largest_equals_topk_with_ties_and_a_narrow_last_block(m, n, k):
    from seqrec.losses.kernels import kth_largest

    s = torch.randint(-20, 21, (m, n), generator=torch.Generator().manual_seed(1)).float()  # many ties
    assert torch.equal(kth_largest(s, k), s.topk(k, dim=1).values[:, -1:])
    assert torch.equal(kth_largest(s, k, width=3), s.topk(k, dim=1).values[:, -1:])


@pytest.mark.parametrize("order", ["random", "rising", "falling"])
@pytest.mark.parametrize("m, n_keys, k, width", [(7, 5000, 20, 32), (3, 1001, 5, 8), (40, 4100, 40, 16)])
def test_topk_two_pass_is_exact_with_ties_and_ragged_blocks(monkeypatch, order, m, n_keys, k, width):
    """The two-pass top-k (a threshold from block maxima, then the scores that reach it) over score
    blocks of a few dozen keys (L2_ELEMS shrunk), a narrow last block and score block, many equal
    scores; pass 1 over all or a third of the blocks; thresholds raised on the way."""
    from seqrec.losses import kernels

    monkeypatch.setattr(kernels, "L2_ELEMS", m * 3 * width)  # 3 blocks of keys per score block
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-3, 4, (m, 8), generator=g).float()
    keys = torch.randint(-3, 4, (n_keys, 8), generator=g).float()
    if order != "random":
        keys = keys[(q[0] @ keys.T).argsort(descending=order == "falling", stable=True)]
    want = _reference(q, keys, k)
    for stride in (1, 3):  # pass 1 over every score block, or every third (a looser threshold)
        assert torch.equal(kernels.topk_two_pass(q, keys, k, width, stride), want)
    monkeypatch.setattr(kernels, "CANDIDATES_PER_ROW", 1)  # thresholds raised after every block
    assert torch.equal(kernels.topk_two_pass(q, keys, k, width, 3), want)
    monkeypatch.setattr(kernels, "CANDIDATES_PER_ROW", 1 << 14)
    assert torch.equal(kernels.topk_two_pass(q, keys, k, width, 10**6), want)  # one block seen: no threshold
    # and topk_rows_chunked takes it by itself for many keys
    assert torch.equal(kernels.topk_rows_chunked(q, keys, k, width=width), _reference(q, keys, k))
    assert torch.equal(kernels.topk_rows_chunked(q, keys, k, chunk=999), _reference(q, keys, k))
