"""Negative samplers for the sampled losses (catalog ids in [0, C)).

Four ways to draw n negatives, all vectorised (no Python loop per position or per row) and all
drawing their randomness from ``ctx.generator`` (torch's default RNG when it is None):

- ``uniform``: uniform over the catalog, with replacement;
- ``uniform_exclude_seen``: uniform without replacement among the items that are not in the
  sequence's history (``ctx.hist_offsets`` / ``ctx.hist_items``, CSR per batch row);
- ``popularity``: with replacement, P(i) ∝ pop_i ** pop_alpha (``ctx.item_pop``);
- each of them either per position or ``shared`` per sequence (one set of n negatives for all
  positions of a batch row, ``ctx.seq_idx``), as in the SASRec+/CE⁻ setup.

The target itself may be drawn; the losses mask it (see ``sampled.py``).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from seqrec.errors import SeqrecError
from seqrec.losses.base import LossContext, check_bool, check_choice, check_int, check_number

Sampler = Literal["uniform", "uniform_exclude_seen", "popularity"]
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)

# below this many (rows x catalog) cells exclusion sampling uses exact random keys over the whole
# catalog (simple, handles n close to C); above it, vectorised rejection sampling
_DENSE_CELLS = 1 << 22


@dataclass
class Negatives:
    """ids: int64 [R, n] catalog ids; row: int64 [N] the row of ``ids`` each position uses;
    log_q: float32 [R, n] log-probability of drawing that id in one draw (for logQ correction)."""

    ids: torch.Tensor
    row: torch.Tensor
    log_q: torch.Tensor


def _rand_device(ctx: LossContext, device: torch.device) -> torch.device:
    return ctx.generator.device if ctx.generator is not None else device


def uniform(r: int, n: int, c: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """[r, n] ids uniform over [0, c), with replacement."""
    return torch.randint(0, c, (r, n), generator=generator, device=device)


def popularity_probs(item_pop: torch.Tensor, alpha: float) -> torch.Tensor:
    """float64 [C] draw probabilities ∝ pop ** alpha (alpha=0 is uniform)."""
    p = item_pop.double().clamp_min(0) ** alpha
    total = p.sum()
    if not total > 0:
        raise SeqrecError("popularity sampler: item_pop sums to zero")
    return p / total


def popularity(r: int, n: int, probs: torch.Tensor, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """[r, n] ids drawn with replacement with probabilities ``probs`` (inverse CDF, any C)."""
    cdf = probs.to(device).cumsum(0)
    u = torch.rand(r * n, generator=generator, device=device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max_(probs.numel() - 1).view(r, n)


def _history_keys(hist_offsets: torch.Tensor, hist_items: torch.Tensor, c: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys row*c + item of the histories, and each row's count of distinct items."""
    offsets = hist_offsets.to(device)
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    keys = torch.unique(rows * c + hist_items.to(device))  # sorted
    counts = torch.bincount(keys // c, minlength=len(lengths))
    return keys, counts


def _is_in(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_max_(sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


def exclude_seen(hist_row: torch.Tensor, n: int, c: int, hist_offsets: torch.Tensor,
                 hist_items: torch.Tensor, generator: torch.Generator | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample row r, n distinct ids uniform among the items not in history ``hist_row[r]``.

    Returns ids [R, n] and the number of allowed items per row [R] (for log q).
    """
    hist_row = hist_row.to(device)
    keys, counts = _history_keys(hist_offsets, hist_items, c, device)
    allowed = c - counts[hist_row]
    if allowed.numel() and int(allowed.min()) < n:
        raise SeqrecError(f"uniform_exclude_seen: a sequence leaves only {int(allowed.min())} unseen items, "
                          f"fewer than n_negatives={n}")
    r = hist_row.numel()
    if r * c <= _DENSE_CELLS:
        # exact: random keys for the whole catalog, seen items pushed past every allowed one
        score = torch.rand((r, c), generator=generator, device=device)
        cells = hist_row[:, None] * c + torch.arange(c, device=device)
        score.masked_fill_(_is_in(cells, keys), 2.0)
        return score.topk(n, dim=1, largest=False).indices, allowed
    # rejection: draw k >= n candidates per row with replacement, keep the first n that are neither
    # seen nor repeated (in draw order, which keeps the sample uniform); redraw the rows that fall short
    out = torch.empty((r, n), dtype=torch.long, device=device)
    todo = torch.arange(r, device=device)
    frac = float((allowed.double() / c).min()) if r else 1.0
    k = int(math.ceil(n / max(frac, 1e-3) * 1.25)) + 16
    while todo.numel():
        cand = torch.randint(0, c, (todo.numel(), k), generator=generator, device=device)
        bad = _is_in(hist_row[todo, None] * c + cand, keys)
        srt, perm = cand.sort(dim=1, stable=True)
        dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = torch.empty_like(dup_sorted).scatter_(1, perm, dup_sorted)
        good = ~(bad | dup)
        rank = good.cumsum(1)
        ok = rank[:, -1] >= n
        take = good & (rank <= n) & ok[:, None]
        out[todo[ok]] = cand[take].view(-1, n)
        todo = todo[~ok]
        k *= 2
    return out, allowed


class NegativeSampler:
    """Draws negatives for a batch: ``sample(targets, n_items, ctx) -> Negatives``.

    n_negatives: negatives per position (or per sequence when ``shared``).
    sampler: "uniform", "uniform_exclude_seen" or "popularity".
    shared: one set of negatives per sequence (``ctx.seq_idx``) instead of per position.
    pop_alpha: exponent of the popularity sampler (0 = uniform, 1 = proportional).
    """

    def __init__(self, n_negatives: int, sampler: Sampler = "uniform", shared: bool = False,
                 pop_alpha: float = 1.0) -> None:
        self.n_negatives = check_int("n_negatives", n_negatives, 1)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.shared = check_bool("shared", shared)
        self.pop_alpha = check_number("pop_alpha", pop_alpha)

    def sample(self, targets: torch.Tensor, n_items: int, ctx: LossContext) -> Negatives:
        device, n = targets.device, self.n_negatives
        rdev = _rand_device(ctx, device)
        npos = targets.numel()
        seq = ctx.seq_idx.to(device) if ctx.seq_idx is not None else None
        if self.shared and seq is not None:
            # rows are sequences; a position uses its sequence's row
            r = int(seq.max()) + 1 if npos else 0
            row, hist_row = seq, torch.arange(r, device=device)
        else:
            # rows are positions (without seq_idx every position is its own sequence)
            r = npos
            row = torch.arange(npos, device=device)
            hist_row = seq if seq is not None else row
        if self.sampler == "uniform":
            ids = uniform(r, n, n_items, ctx.generator, rdev)
            log_q = torch.full((1, 1), -math.log(n_items), device=device).expand(r, n)  # no [r, n] buffer
        elif self.sampler == "popularity":
            if ctx.item_pop is None:
                raise SeqrecError("popularity sampler needs ctx.item_pop (training popularity per item)")
            probs = popularity_probs(ctx.item_pop, self.pop_alpha)
            ids = popularity(r, n, probs, ctx.generator, rdev)
            log_q = probs.to(device)[ids.to(device)].log().float()
        else:
            if ctx.hist_offsets is None or ctx.hist_items is None:
                raise SeqrecError("uniform_exclude_seen sampler needs ctx.hist_offsets and ctx.hist_items")
            ids, allowed = exclude_seen(hist_row.to(rdev), n, n_items, ctx.hist_offsets, ctx.hist_items,
                                        ctx.generator, rdev)
            log_q = (-allowed.double().log()).float().to(device)[:, None].expand(r, n)
        return Negatives(ids.to(device), row, log_q)
