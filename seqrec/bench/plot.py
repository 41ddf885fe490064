"""Every figure of ``seqrec bench``: one function per bench, on a few shared chart helpers.

The figures are ``matplotlib.figure.Figure`` objects built without pyplot (no global state, no
backend to select); ``seqrec.bench.common.write_results`` renders and writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

Records = list[dict[str, Any]]


def _figure(panels: int, size: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """A figure with ``panels`` axes side by side; ``size`` (inches) is that of one panel."""
    fig = Figure(figsize=(size[0] * panels, size[1]))
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _no_data(fig: Figure, ax: Any, title: str) -> Figure:
    ax.text(0.5, 0.5, "no successful case", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return fig


def hbars(labels: Sequence[str], panels: Sequence[tuple[str, Sequence[float], float | None, str]],
          title: str, size: tuple[float, float] = (5.5, 3.8)) -> Figure:
    """Horizontal bars, one row per label, one panel per ``(xlabel, values, line_at, line_label)``
    (a dashed reference line at ``line_at`` when it is not None)."""
    fig, axes = _figure(len(panels), size)
    if not labels:
        return _no_data(fig, axes[0], title)
    for ax, (xlabel, values, line_at, line_label) in zip(axes, panels, strict=True):
        ax.barh(list(labels), list(values), color="tab:blue")
        if line_at is not None:
            ax.axvline(line_at, color="tab:red", ls="--", lw=1, label=line_label)
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def data_figure(records: Records, target: dict[str, float]) -> Figure:
    """``bench data``: wall time and peak RSS per case, with the 20M targets."""
    ok = [r for r in records if r.get("status") == "ok"]
    return hbars([f"{r['dataset']}\n{r['case']}" for r in ok],
                 [(f"{key} ({unit})", [r[key] for r in ok], target[key], f"20M target {target[key]:g} {unit}")
                  for key, unit in (("wall_s", "s"), ("peak_rss_mb", "MB"))],
                 "seqrec data preparation: wall time and peak RSS (fresh process per case)")


def fidelity_figure(records: Records) -> Figure:
    """``bench fidelity``: cosine of dX and of dW with full CE's, per loss spec (1 = CE's direction)."""
    labels = ["\n".join([r["loss"], *(f"{k}={v}" for k, v in r["params"].items())]) for r in records]
    return hbars(labels, [(f"cosine of {g} with CE's", [r[key] for r in records], 1.0, "CE")
                          for g, key in (("dX", "cos_dx"), ("dW", "cos_dw"))],
                 "Gradient fidelity to full CE")


def evaluation_figure(records: Records) -> Figure:
    """``bench evaluation``: users scored per second and total time, per retrieval backend."""
    labels = [r["backend"] for r in records]
    return hbars(labels, [("users / s", [r["users_per_s"] for r in records], None, ""),
                          ("total time (s)", [r["total_s"] for r in records], None, "")],
                 "Full-catalog evaluation speed", size=(5, 3))


def losses_figure(records: Records, key: str) -> Figure:
    """``bench losses``: log-log net peak memory (``key``: peak - baseline) against catalog size,
    one line per loss; a skipped case is a grey x at its predicted size."""
    fig, (ax,) = _figure(1, (7, 4.5))
    for name in dict.fromkeys(r["loss"] for r in records):
        pts = [(r["catalog"], max(r[key], 0.1)) for r in records if r["loss"] == name and r["status"] == "ok"]
        if pts:
            ax.plot(*zip(*pts, strict=False), marker="o", label=name)
        skipped = [(r["catalog"], r["predicted_mb"]) for r in records
                   if r["loss"] == name and r["status"] == "skipped"]
        if skipped:
            ax.scatter(*zip(*skipped, strict=False), marker="x", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size C")
    ax.set_ylabel("net peak memory of one step (MB)")
    ax.set_title("Loss memory vs catalog (x = skipped, at its predicted size)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def quality_figure(rows: Records, dataset: str) -> Figure:
    """``bench quality``: test NDCG@10 (mean ± std over seeds) against peak memory, one point per loss."""
    fig, (ax,) = _figure(1, (6.5, 4.5))
    for r in rows:
        if "ndcg@10" not in r or "peak_mb" not in r:
            continue
        ax.errorbar(r["peak_mb"], r["ndcg@10"], yerr=r["ndcg@10_std"], xerr=r["peak_mb_std"], fmt="o",
                    capsize=3, label=r["loss"])
        ax.annotate(r["loss"], (r["peak_mb"], r["ndcg@10"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set_xlabel("peak memory of training (MB)")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"Quality vs memory on {dataset}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def retrieval_figure(records: Records, k: int) -> Figure:
    """``bench retrieval``: recall@k against queries/s per backend (one panel per embeddings kind
    and catalog size); a star marks the default settings."""
    cases = sorted({(r["embeddings"], r["catalog"]) for r in records})
    fig, axes = _figure(max(1, len(cases)), (5, 4))
    if not cases:
        return _no_data(fig, axes[0], "Retrieval: recall vs queries/s")
    for ax, (kind, n) in zip(axes, cases, strict=True):
        for backend in dict.fromkeys(r["backend"] for r in records):
            # in sweep order (nprobe / ef_search increasing): timing noise must not reorder the curve
            rs = [r for r in records if r["embeddings"] == kind and r["catalog"] == n and r["backend"] == backend]
            if not rs:
                continue
            line = ax.plot([r["qps"] for r in rs], [r[f"recall@{k}"] for r in rs], "o-", label=backend)[0]
            for r in rs:
                if r["default"]:
                    ax.plot(r["qps"], r[f"recall@{k}"], "*", ms=14, color=line.get_color(), mec="black")
        ax.set_xscale("log")
        ax.set_xlabel("queries / s (log)")
        ax.set_ylabel(f"recall@{k} vs exact")
        ax.set_title(f"{kind}, {n:,} items")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="★ = default settings", fontsize=8)
    fig.tight_layout()
    return fig


def throughput_figure(records: Records, parts: Sequence[str]) -> Figure:
    """``bench throughput``: seconds per training step stacked by part, one bar per loss, tokens/s on top."""
    fig, (ax,) = _figure(1, (max(5.5, 1.3 * len(records) + 3.5), 4.5))
    if not records:
        return _no_data(fig, ax, "Training step time by part")
    labels = [f"{r['loss']}{' ' + r['autocast'] if r.get('autocast') else ''}" for r in records]
    bottom = [0.0] * len(records)
    for part in parts:
        vals = [r[f"{part}_s"] for r in records]
        ax.bar(labels, vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for x, (top, r) in enumerate(zip(bottom, records, strict=True)):
        ax.text(x, top, f"{r['tokens_per_s']:,.0f} tok/s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds per step")
    ax.set_ylim(0, max(bottom) * 1.12)  # room for the tokens/s labels
    ax.set_title("Training step time by part")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    fig.tight_layout()
    return fig


def scale_figure(records: Records) -> Figure:
    """``bench scale``: seconds per step and peak RSS against the catalog size (log-log), a line per loss."""
    fig, axes = _figure(2, (11, 4.2))
    ran = [r for r in records if r.get("step_s")]
    if not ran:
        return _no_data(fig, axes[0], "Training at growing catalogs")
    for ax, key, label in ((axes[0], "step_s", "seconds per training step"), (axes[1], "peak_rss_mb", "peak RSS, MB")):
        for loss in dict.fromkeys(r["loss"] for r in ran):
            pts = sorted((r["items"], r[key]) for r in ran if r["loss"] == loss and r.get(key))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=loss)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("Step time")
    axes[1].set_title("Peak RSS of the whole process")
    fig.tight_layout()
    return fig
