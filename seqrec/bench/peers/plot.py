"""The time-to-quality figure of ``seqrec bench peers``: test NDCG@10 against training wall time."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def time_to_quality(records: list[dict[str, Any]]) -> Figure:
    """One panel per dataset, one line per library / model / loss: the test NDCG@10 (seqrec's
    evaluator) reached at each budget, against the training seconds actually used; failed cases
    are left out."""
    datasets = sorted({str(r.get("dataset")) for r in records}) or ["(none)"]
    fig = Figure(figsize=(9.5 * len(datasets), 4.5), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets, strict=True):
        _panel(ax, [r for r in records if str(r.get("dataset")) == name], name)
    return fig


def _panel(ax: Any, records: list[dict[str, Any]], dataset: str) -> None:
    lines: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in records:
        if r.get("ndcg@10") is None or r.get("train_s") is None:
            continue
        key = (str(r["library"]), str(r["model"]), str(r["loss"]))
        lines.setdefault(key, []).append((float(r["train_s"]), float(r["ndcg@10"])))
    # a colour per library, a line style per loss, a marker per model: ten default colours were
    # too few for a line each
    libs = sorted({lib for lib, _, _ in lines})
    styles = {"ce": "-", "sce": "--", "gbce": ":"}
    for (lib, model, loss), pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{libs.index(lib) % 10}",
                linestyle=styles.get(loss, "-."), marker="^" if model == "bert4rec" else "o",
                label=f"{lib} {model} {loss}")
    if not lines:
        ax.text(0.5, 0.5, "no successful case", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test NDCG@10 (seqrec's evaluator)")
    ax.set_title(f"Time to quality: {dataset}")
    ax.grid(alpha=0.3)
