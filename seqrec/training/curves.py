"""``RUN/curves.png``: the training curves of a run, redrawn (atomically) at every epoch end.

Four panels: training loss and validation NDCG@10 / HR@10, each against the epoch and against the
training wall time (``elapsed_s``). The popularity baseline's NDCG@10 / HR@10 on the same validation
users is drawn as dashed horizontal lines: a curve below them is a model that has not yet learnt
more than item counts. Matplotlib's Agg canvas is used directly (no pyplot, no global backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqrec.io import atomic_path
from seqrec.rundir import RunDir
from seqrec.training.callbacks import Callback
from seqrec.training.state import TrainState

if TYPE_CHECKING:
    from seqrec.training.trainer import Trainer

METRICS = ("ndcg@10", "hr@10")


def popularity_metrics(trainer: Trainer) -> dict[str, float]:
    """The most-popular baseline's metrics on the trainer's validation users ({"ndcg@10": ..., ...})."""
    from seqrec.evaluation import evaluate
    from seqrec.registry import MODELS

    pop = MODELS.build("pop", trainer.data.n_items).fit_popularity(trainer.data.item_pop).to(trainer.device)
    e = trainer.cfg.eval
    return evaluate(pop, trainer.valid, max_len=1, ks=[10], filter_seen=e.filter_seen, batch_size=e.batch_size,
                    device=trainer.device, seed=int(trainer.cfg.train.seed))


class Curves(Callback):
    """Redraws ``run/curves.png`` after every epoch (also the epochs of a resumed run's history)."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.path / "curves.png"
        self.pop: dict[str, float] = {}

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.pop = popularity_metrics(trainer)
        if state.history:
            draw_curves(self.path, state.history, self.pop)

    def on_epoch_end(self, trainer: Trainer, state: TrainState, record: dict[str, float]) -> None:
        draw_curves(self.path, state.history, self.pop)


def draw_curves(path: str | Path, history: list[dict[str, Any]], pop: dict[str, float] | None = None,
                title: str | None = None) -> None:
    """Draw the metrics.jsonl records ``history`` (epoch, loss, elapsed_s, valid_ndcg@10, valid_hr@10)
    into the PNG ``path`` (written atomically); ``pop``: the baseline's metrics, drawn as dashed lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    epochs = [h["epoch"] for h in history]
    wall = [h.get("elapsed_s", float("nan")) for h in history]
    for row, (x, label) in enumerate(((epochs, "epoch"), (wall, "training wall time (s)"))):
        loss_ax, metric_ax = axes[row]
        loss_ax.plot(x, [h["loss"] for h in history], marker="o", ms=3, color="tab:red")
        loss_ax.set(xlabel=label, ylabel="training loss")
        for i, m in enumerate(METRICS):
            color = f"C{i}"
            metric_ax.plot(x, [h.get(f"valid_{m}", float("nan")) for h in history], marker="o", ms=3,
                           color=color, label=f"valid {m}")
            if pop and m in pop:
                metric_ax.axhline(pop[m], ls="--", lw=1, color=color, label=f"popularity {m}")
        metric_ax.set(xlabel=label, ylabel="validation metric")
        metric_ax.legend(fontsize=8, loc="best")
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
            if row == 0:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    fig.suptitle(title or f"{Path(path).parent.name}: {len(history)} epochs")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
