"""Full softmax cross-entropy over the catalog: the reference objective (memory O(N*C))."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqrec.losses.base import Loss, LossContext


class FullCE(Loss):
    """Softmax cross-entropy over every item: logits [N, C] in memory."""

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, item_emb: torch.Tensor,
                ctx: LossContext) -> torch.Tensor:
        logits = hidden @ item_emb.T  # [N, C]
        return F.cross_entropy(logits.float(), targets)

    def predict_bytes(self, n: int, c: int, d: int, dtype_bytes: int = 4, capacity: int | None = None) -> int:
        # logits, float32 copy / softmax in backward, grad of logits: ~3 live [N, C] buffers
        return 3 * n * c * 4 + 2 * c * d * 4
