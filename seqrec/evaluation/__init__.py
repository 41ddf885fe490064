"""Full-catalog ranking evaluation: top-k per user only, seen items filtered by default."""

from seqrec.evaluation.metrics import rank_metrics
from seqrec.evaluation.ranking import evaluate, user_vectors

__all__ = ["evaluate", "rank_metrics", "user_vectors"]
