"""Parameter-efficient fine-tuning of a trained encoder's feed-forward blocks, chosen by name.

    PEFT.build("sparsegrad", budget=0.01)    # or lora, meprop, topk, full
    method.attach(model, gradients)          # swap the feed-forward linears, freeze the rest
    Trainer(..., optimizer=method.optimizer_factory(cfg.train)).fit()
    method.export(model)                     # plain nn.Linear again: no inference overhead

``budget`` is the share of each feed-forward weight's entries a step may update (matched across
methods: SparseGrad/top-k keep k = budget * d_out * d_in gradient entries, LoRA takes the rank with
r * (d_in + d_out) ~ k, MeProp keeps budget * d_out entries of each output-gradient row). The
linears are found through the encoder's ``ffn_linears()`` (see docs/finetune.md).
``seqrec.peft.finetune.finetune`` continues a trained run on new data with one of them.
"""

from seqrec.peft.base import CombinedOptimizer, PeftMethod, ffn_modules
from seqrec.registry import Registry

PEFT = Registry("fine-tuning method", "seqrec.peft", builtins={
    "sparsegrad": "seqrec.peft.sparse:SparseGrad",
    "topk": "seqrec.peft.sparse:TopK",
    "lora": "seqrec.peft.lora:LoRA",
    "meprop": "seqrec.peft.meprop:MeProp",
    "full": "seqrec.peft.base:Full",
})

__all__ = ["PEFT", "CombinedOptimizer", "PeftMethod", "ffn_modules"]
