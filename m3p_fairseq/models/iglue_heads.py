"""IGLUE's task heads on the understanding model's pooled output, as volta fine-tunes M3P.

Pooled output (volta's M3P): ``dropout(tanh(dense(h[:, 0])))``, position 0 of the joint sequence
as the VLM head reads it, dropout ``--pooler-dropout`` (0.1). The pooler of the reference is the
VLM head's ``dense`` here (``preprocess/import_m3p.py`` maps ``pooled_layer.dense`` onto it), so a
new head starts its own pooler from the pre-trained one (``start_poolers_from_vlm``, called when
pre-trained weights are loaded), as volta's M3P fine-tuning starts from ``pooled_layer``.

On the pooled output (d = the model's width):

* ``answers`` (GQA -> xGQA): volta's ``SimpleClassifier``, Linear(d, 2d) -> GELU -> LayerNorm ->
  Linear(2d, answers);
* ``classes`` (SNLI-VE -> XVNLI): Linear(d, classes), volta's ``VL-tri-classifier``;
* ``pair`` (NLVR2 -> MaRVL): the batch holds two rows per example (the statement with the left
  image, then with the right one); their pooled vectors are concatenated (B x 2d) and a
  SimpleClassifier Linear(2d, 2d) -> GELU -> LayerNorm -> Linear(2d, 2) reads them.

The heads live in ``model.classification_heads`` beside the VLM head, so checkpoints save and load
them as any RoBERTa head (fairseq's bookkeeping reads each head's ``dense`` and ``out_proj``: the
pooler and the last layer here).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_sentence_encoder import init_bert_params

HEAD_KINDS = ("answers", "classes", "pair")


class PooledHead(nn.Module):
    """Pooler (dense + tanh + dropout) over position 0, then the task's classifier."""

    def __init__(self, dim, num_classes, kind, dropout=0.1, layernorm_eps=None):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown IGLUE head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
        self.kind = kind
        self.rows_per_example = 2 if kind == "pair" else 1
        self.dense = nn.Linear(dim, dim)  # the pooler
        self.dropout = nn.Dropout(dropout)
        width = dim * self.rows_per_example
        if kind != "classes":  # volta's SimpleClassifier, hidden size 2d (clf_hidden_size 1536 for M3P base)
            self.hidden = nn.Linear(width, 2 * dim)
            self.layer_norm = LayerNorm(2 * dim, eps=layernorm_eps or 1e-5)
            width = 2 * dim
        self.out_proj = nn.Linear(width, num_classes)
        self.apply(init_bert_params)  # volta initializes its heads as BERT (normal 0.02, zero biases)

    def pool(self, features):
        """B x T x C -> B x C: the pooled output of each row."""
        return self.dropout(torch.tanh(self.dense(features[:, 0])))

    def forward(self, features, **unused):
        x = self.pool(features)
        if self.rows_per_example > 1:
            if x.size(0) % self.rows_per_example:
                raise ValueError(f"{x.size(0)} rows: the two-image head reads two rows per example")
            x = x.reshape(-1, x.size(-1) * self.rows_per_example)  # rows 2i, 2i+1 -> example i
        if self.kind != "classes":
            x = self.layer_norm(F.gelu(self.hidden(x)))
        return self.out_proj(x)


def add_iglue_head(model, name, kind, num_classes):
    """Register head ``name`` on an M3PModel (replacing a head of other sizes); returns it."""
    head = model.classification_heads[name] if name in model.classification_heads else None
    if not (isinstance(head, PooledHead) and head.kind == kind and head.out_proj.out_features == num_classes):
        args = model.args
        head = PooledHead(args.encoder_embed_dim, num_classes, kind, dropout=args.pooler_dropout,
                          layernorm_eps=getattr(args, "layernorm_eps", None))
        model.classification_heads[name] = head
    return head


def start_poolers_from_vlm(model, state_dict, prefix, vlm_head):
    """Before pre-trained weights load into ``model``: each IGLUE head the checkpoint lacks gets the
    checkpoint's pooler (the VLM head's dense) as its own pooler's starting point. A checkpoint that
    holds the head (resuming, evaluating a fine-tuned model) keeps its own."""
    src = f"{prefix}classification_heads.{vlm_head}.dense."
    if src + "weight" not in state_dict:
        return
    for name, head in getattr(model, "classification_heads", {}).items():
        dst = f"{prefix}classification_heads.{name}."
        if isinstance(head, PooledHead) and dst + "dense.weight" not in state_dict:
            # the head as initialized (fairseq's head bookkeeping reads every part of a head it finds), its pooler
            # the pre-trained one
            state_dict.update({dst + k: v for k, v in head.state_dict().items()})
            for p in ("weight", "bias"):
                state_dict[f"{dst}dense.{p}"] = state_dict[src + p].clone()
