"""Kernels shared by SCE (``sce.py``, ``sce_variants.py``) and RECE (``rece.py``).

Block sizing, autocast replay for recomputation in backward, row gathers, the exact row-wise top-k
of a product that SCE's bucket selection runs on (chunked, or in two passes over cache-sized
blocks), and the scoring of a group of SCE buckets ([g, k_x, k_y] logits with each position's own
target masked).
"""

from __future__ import annotations

import torch

# Largest number of float32 elements in one working block (scores chunk or bucket-logits group):
# 2**22 elements = 16 MiB, small next to the [C, d] gradient yet large enough for fast matmuls.
BLOCK_ELEMS = 1 << 22
# on CUDA a block's cost is its kernel launches, not cache misses: 8x larger blocks there
CUDA_BLOCK_FACTOR = 8
# float32 elements of a score block that stays in a core's L2 cache (1 MiB): topk_two_pass
L2_ELEMS = 1 << 18
# topk_two_pass's candidates a row before its threshold is raised (normally ~stride k)
CANDIDATES_PER_ROW = 1 << 14
# topk_two_pass's score blocks whose hit blocks are filtered key by key together
FLUSH_BLOCKS = 16

AutocastState = tuple[bool, torch.dtype | None]


def block_elems(device: torch.device | None = None) -> int:
    """Working-block size in float32 elements on ``device`` (None: the base size, as on CPU)."""
    return BLOCK_ELEMS * (CUDA_BLOCK_FACTOR if device is not None and device.type == "cuda" else 1)


def autocast_state(device_type: str) -> AutocastState:
    """(enabled, dtype) of autocast on ``device_type``: replayed in backward when recomputing."""
    try:
        if torch.is_autocast_enabled(device_type):
            return True, torch.get_autocast_dtype(device_type)
    except (TypeError, RuntimeError):  # device type without autocast support
        pass
    return False, None


def bmm(a: torch.Tensor, b: torch.Tensor, ac: AutocastState) -> torch.Tensor:
    """a [g, m, d] @ b[g, k, d]^T -> float32 [g, m, k], under the caller's autocast state."""
    enabled, dtype = ac
    if enabled:
        with torch.autocast(a.device.type, dtype=dtype):
            return torch.bmm(a, b.transpose(1, 2)).float()
    dt = torch.promote_types(a.dtype, b.dtype)
    return torch.bmm(a.to(dt), b.to(dt).transpose(1, 2)).float()


def rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for a 2-D table: [*idx.shape, table.shape[1]]. index_select gathers rows ~3x
    faster than advanced indexing on CPU (2026-11-27, torch 2.13); no autograd graph needed."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])


def positive_logits(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """<X[n], W[y[n]]> in float32 [N] (no autograd graph: callers handle its gradient)."""
    return (hidden.float() * item_emb[targets].float()).sum(-1)


@torch.no_grad()
def topk_rows_chunked(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int | None = None,
                      merge_every: int = 8, width: int = 32) -> torch.Tensor:
    """Indices [m, k] of the k largest ``queries @ keys^T`` per row: the exact top-k ordered by score
    (descending), equal scores by the lower key index. queries [m, d], keys [K, d]; never an [m, K]
    buffer.

    Many keys on CPU (K >= 2 k ``width``, ``chunk`` not given): ``topk_two_pass``. Otherwise the
    keys are scanned in chunks of ``chunk``; each chunk's own top-k joins a candidate buffer of
    (merge_every + 1) k per row, cut back to each row's best k when full: O(m (chunk + merge_every
    k)) memory.
    """
    m, K = queries.shape[0], keys.shape[0]
    k = min(k, K)
    q = queries.float()
    if chunk is None and q.device.type == "cpu" and K >= 2 * k * width:
        return topk_two_pass(q, keys, k, width)
    if chunk is None:
        chunk = max(k, width, block_elems() // max(m, 1))
    cap = (merge_every + 1) * k
    # preallocated: small per-chunk results kept alive between the large score buffers would
    # fragment the heap
    buf_v = torch.full((m, cap), float("-inf"), device=q.device)
    buf_i = torch.zeros(m, cap, dtype=torch.long, device=q.device)
    fill = torch.zeros(m, dtype=torch.long, device=q.device)
    for c0 in range(0, K, chunk):
        s = q @ keys[c0:c0 + chunk].float().T  # [m, c]
        if int(fill.max()) + k > cap:
            _reduce(buf_v, buf_i, fill, k)
        r, c = _chunk_topk(s, k, cap - int(fill.max()))
        cnt = torch.bincount(r, minlength=m)
        pos = fill[r] + torch.arange(len(r), device=q.device) - (torch.cumsum(cnt, 0) - cnt)[r]
        buf_v[r, pos] = s[r, c]
        buf_i[r, pos] = c + c0
        fill += cnt
        del s
    w = max(int(fill.max()), k)  # slots past every row's fill are -inf: leave them out of the sort
    return _best_first(buf_v[:, :w], buf_i[:, :w], k)[1]


def topk_share(queries: torch.Tensor, keys: torch.Tensor, k: int, stride: int = 1, off: int = 0,
               extra: torch.Tensor | None = None) -> torch.Tensor:
    """``topk_rows_chunked`` over the keys i = ``off`` mod ``stride`` only (a strided view: no copy),
    as indices [m, k] into all of ``keys``; ``extra`` (int64 [R], ids outside that share) joins the
    candidates: the top k of each part are merged by score, so the result is the top k of the union."""
    top = topk_rows_chunked(queries, keys[off::stride], k) * stride + off
    if extra is None or extra.numel() == 0:
        return top
    ids = torch.cat([top, extra[topk_rows_chunked(queries, keys[extra], k)]], 1)  # [m, <= 2k]
    q, rows = queries.float(), max(1, block_elems(queries.device) // (ids.shape[1] * keys.shape[1]))
    scores = torch.cat([torch.einsum("md,mjd->mj", q[r:r + rows], keys[ids[r:r + rows]].float())
                        for r in range(0, len(ids), rows)])
    return _best_first(scores, ids, k)[1]


@torch.no_grad()
def topk_two_pass(queries: torch.Tensor, keys: torch.Tensor, k: int, width: int = 32,
                  stride: int | None = None) -> torch.Tensor:
    """``topk_rows_chunked`` for many keys (K >= 2 k ``width``), in two passes over [sub, m] score
    blocks small enough to stay in a core's L2 cache: no score is ever written to memory, which
    at a million keys had been most of the cost (docs/benchmarks.md).

    Pass 1 scores every ``stride``-th score block and keeps each row's threshold: the k-th largest
    maximum of its blocks of ``width`` consecutive keys (k blocks reach it, so k keys do). Pass 2
    scores every block again and keeps the scores at or above the threshold, found through the
    block maxima. A key of the top k is at or above it, and the blocks pass 1 saw are scored again
    by the same GEMM on the same buffer (the same values), so the result is exact. ``stride``
    (default 4 from 64 k blocks on, else 1) trades pass 1's work against a looser threshold:
    ~stride k candidates a row. Should the candidates outgrow ``CANDIDATES_PER_ROW`` (keys laid
    out against the stride), each row's k-th best so far raises its threshold.
    """
    m, K = queries.shape[0], keys.shape[0]
    q = queries.float()
    sub = max(width, L2_ELEMS // max(m, 1) // width * width)  # keys per score block
    if stride is None:
        stride = 4 if K >= 64 * k * width else 1
    s = q.new_empty(sub, m)
    bmax = q.new_empty(sub // width, m)

    def scores(j0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [blocks, width, m] of keys j0.. (a ragged last block padded with -inf) and the
        blocks' maxima [blocks, m]."""
        n = min(sub, K - j0)
        torch.mm(keys[j0:j0 + n].float(), q.T, out=s[:n])
        b = -(-n // width)
        if n < b * width:
            s[n:b * width] = float("-inf")
        sc = s[:b * width].view(b, width, m)
        # maxima over a middle dimension: m-wide vector maxima, ~3x faster than over the last
        return sc, torch.amax(sc, 1, out=bmax[:b])

    seen = torch.cat([scores(j0)[1].clone() for j0 in range(0, K, sub * stride)])
    # fewer than k blocks seen (a large stride on few keys): no threshold yet, _tighten makes one
    thr = kth_largest(seen.T.contiguous(), k).view(m) if len(seen) >= k else q.new_full((m,), float("-inf"))
    del seen
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    hits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    held = 0
    block_starts = range(0, K, sub)
    for i, j0 in enumerate(block_starts):
        sc, bm = scores(j0)
        blk, row = (bm >= thr).nonzero(as_tuple=True)
        hits.append((row, blk + j0 // width, sc[blk, :, row]))  # a hit block's scores [hits, width]
        if len(hits) < FLUSH_BLOCKS and i + 1 < len(block_starts):
            continue
        # the per-key filter runs once for several score blocks: per-op overhead, not the work,
        # had made it cost more than the GEMM
        r, b, v = (torch.cat(t) for t in zip(*hits, strict=True))
        hits = []
        h, lane = (v >= thr[r, None]).nonzero(as_tuple=True)
        ids = b[h] * width + lane
        inside = ids < K  # padding lanes pass a -inf threshold
        found.append((r[h][inside], ids[inside], v[h, lane][inside]))
        held += len(found[-1][0])
        if held > CANDIDATES_PER_ROW * m:
            found = [_tighten(found, thr, m, k)]
            held = len(found[0][0])
    r, c, v = (torch.cat(t) for t in zip(*found, strict=True))
    order, starts, _ = _by_row(r, v, m)  # every row holds k candidates at least (k blocks reach thr)
    return c[order[starts[:, None] + torch.arange(k, device=c.device)]]


def _by_row(r: torch.Tensor, v: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (rows r, values v) in the order of their ids within a row -> (order, starts,
    counts): each row's candidates are ``order[starts[row]:starts[row] + counts[row]]``, best first,
    equal values by the lower id (two stable sorts: ~3x cheaper than padding them into an
    [m, most a row] buffer)."""
    order = torch.argsort(v, descending=True, stable=True)
    order = order[torch.argsort(r[order], stable=True)]
    cnt = torch.bincount(r, minlength=m)
    return order, torch.cumsum(cnt, 0) - cnt, cnt


def _tighten(found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], thr: torch.Tensor, m: int,
             k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raise ``thr`` [m] in place to each row's k-th best candidate (rows with k of them), and keep
    the candidates at or above it."""
    r, c, v = (torch.cat(t) for t in zip(*found, strict=True))
    order, starts, counts = _by_row(r, v, m)
    full = counts >= k
    kth = v[order[(starts + k - 1).clamp_(max=len(v) - 1)]]
    thr.copy_(torch.where(full, torch.maximum(thr, kth), thr))
    keep = v >= thr[r]
    return r[keep], c[keep], v[keep]


def _chunk_topk(s: torch.Tensor, k: int, room: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of each row's k best scores of ``s`` [m, c] and any equal to its k-th (a tie at
    the boundary is settled later by the lower index); a full stable sort only if ties overflow ``room``."""
    kth = kth_largest(s, min(k, s.shape[1]))
    r, c = (s >= kth).nonzero(as_tuple=True)
    if int(torch.bincount(r, minlength=s.shape[0]).max()) <= room:
        return r, c
    j = s.argsort(dim=1, descending=True, stable=True)[:, :k]
    return torch.arange(s.shape[0], device=s.device).repeat_interleave(j.shape[1]), j.reshape(-1)


def kth_largest(s: torch.Tensor, k: int, width: int = 8) -> torch.Tensor:
    """The k-th largest value of each row of ``s`` [m, n] -> [m, 1], as ``s.topk(k).values[:, -1:]``.

    The k largest entries lie in the k blocks of ``width`` columns with the largest maxima (a block
    left out has k blocks at least as high above it), so a top-k of the block maxima and one over
    those k blocks replace a top-k over all n columns (torch's top-k costs ~13 ns an entry at
    k = 320: about 3x less work at n = 13k)."""
    m, n = s.shape
    if n // width < 2 * k:
        return s.topk(k, dim=1).values[:, -1:]
    full = n // width * width
    blocks = s[:, :full].view(m, -1, width)
    top = blocks.amax(2).topk(k, dim=1).indices  # [m, k]
    cand = blocks.gather(1, top.unsqueeze(2).expand(-1, -1, width)).view(m, -1)
    if full < n:  # the narrower last block: all of it
        cand = torch.cat([cand, s[:, full:]], 1)
    return cand.topk(k, dim=1).values[:, -1:]


def _reduce(buf_v: torch.Tensor, buf_i: torch.Tensor, fill: torch.Tensor, k: int) -> None:
    """Keep each row's k best candidates in the first slots (the rest -inf), in place."""
    width = int(fill.max())
    if width == 0:
        return
    kk = min(k, width)
    bv, bi = _best_first(buf_v[:, :width], buf_i[:, :width], kk)
    buf_v[:, :kk], buf_i[:, :kk] = bv, bi
    buf_v[:, kk:] = float("-inf")
    fill.clamp_(max=kk)


def _best_first(v: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (score, id) pairs per row of [m, w] candidates, by score descending, equal scores
    by the lower id (so a tie never depends on where a candidate sat in the buffer)."""
    by_id = ids.argsort(dim=1)
    v, ids = v.gather(1, by_id), ids.gather(1, by_id)
    order = v.argsort(dim=1, descending=True, stable=True)[:, :k]
    return v.gather(1, order), ids.gather(1, order)


# ---------------------------------------------------------------- SCE buckets
def bucket_centres(x: torch.Tensor, n_buckets: int, mix_x: bool, generator: torch.Generator | None) -> torch.Tensor:
    """SCE's bucket directions Omega [n_b, d]: Gaussian, or (``mix_x``) Gaussian mixtures G^T X."""
    n, d = x.shape
    if mix_x:
        return torch.randn(n, n_buckets, generator=generator, device=x.device).T @ x
    return torch.randn(n_buckets, d, generator=generator, device=x.device)


def group_size(n_rows: int, k_x: int, k_y: int, d: int) -> int:
    """Buckets per working group: a group's [g, k_x, k_y] logits and gathered rows fit a block."""
    return max(1, min(n_rows, block_elems() // (k_x * k_y + (k_x + k_y) * d)))


def bucket_logits(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor, ix: torch.Tensor,
                  iy: torch.Tensor, ac: AutocastState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked logits float32 [g, k_x, k_y] of a group of buckets (positions ix [g, k_x], items
    iy [g, k_y]), plus the gathered rows xb [g, k_x, d] and wb [g, k_y, d]."""
    xb, wb = rows(hidden, ix), rows(item_emb, iy)
    logits = bmm(xb, wb, ac)
    # The position's own target must never be a negative (it is the appended class). A bucket's
    # items are distinct, so each row holds its target at most once: find it by binary search in
    # the bucket's sorted items instead of comparing all k_x * k_y pairs.
    siy, perm = iy.sort(dim=1)
    t = targets[ix]  # [g, k_x]
    j = torch.searchsorted(siy, t).clamp_(max=siy.shape[1] - 1)
    hit = siy.gather(1, j) == t
    b, r = hit.nonzero(as_tuple=True)
    logits[b, r, perm.gather(1, j)[b, r]] = float("-inf")
    return logits, xb, wb


def logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim, overwriting ``logits`` (saves the [g, k_x, k_y] temporaries)."""
    m = logits.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # an all-masked row stays -inf below
    return logits.sub_(m).exp_().sum(-1).log_().add_(m.squeeze(-1))


def negative_lse(hidden: torch.Tensor, item_emb: torch.Tensor, targets: torch.Tensor, idx_x: torch.Tensor,
                 idx_y: torch.Tensor, ac: AutocastState, counts=None) -> torch.Tensor:
    """logsumexp over each bucket row's (masked) items, float32 [n_b, k_x], group by group; with
    ``counts`` (sce_variants.CopyCounts) every logit is first lowered by log of its copy count."""
    n_b, k_x = idx_x.shape
    out = torch.empty(n_b, k_x, device=hidden.device)
    extra = n_b if counts is not None else 0  # the count matmul's inputs
    g = group_size(n_b, k_x, idx_y.shape[1], hidden.shape[1] + extra)
    for b0 in range(0, n_b, g):
        logits, _, _ = bucket_logits(hidden, item_emb, targets, idx_x[b0:b0 + g], idx_y[b0:b0 + g], ac)
        if counts is not None:
            logits.sub_(counts.log(b0, b0 + g))
        out[b0:b0 + g] = logsumexp_(logits)
        del logits
    return out


def add_positive_grad(dx: torch.Tensor, dw: torch.Tensor, dpos: torch.Tensor, hidden: torch.Tensor,
                      item_emb: torch.Tensor, targets: torch.Tensor) -> None:
    """Adds the appended positive column's gradient in place: dpos [N] = d loss / d <X[n], W[y[n]]>
    into dx [N, d] and dw [C, d] (float32)."""
    dx.add_(dpos.unsqueeze(1) * item_emb[targets].float())
    dw.index_add_(0, targets, dpos.unsqueeze(1) * hidden.float())
