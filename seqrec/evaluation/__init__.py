"""Full-catalog ranking evaluation: top-k per user only, seen items filtered by default."""

from seqrec.evaluation.compare import compare_ranks, per_user
from seqrec.evaluation.metrics import rank_metrics
from seqrec.evaluation.ranking import evaluate, evaluation_ranks, user_vectors

__all__ = ["compare_ranks", "evaluate", "evaluation_ranks", "per_user", "rank_metrics", "user_vectors"]
