"""The dual-encoder view of the understanding model, for two-stage retrieval.

The cross-encoder (VLM head over ``<s> text </s> [regions]``) must see every (image, caption)
pair: N x M forward passes. The dual encoder runs the same encoder on the text alone and on the
regions alone (behind a lone ``<s>``, whose output is the [CLS] the heads read), so N + M passes
embed both sides and a dot product scores every pair; it shortlists candidates that the
cross-encoder then re-ranks. Its two projection heads (text, image) are RoBERTa classification
heads registered on the model, trained with an in-batch contrastive loss during retrieval
fine-tuning (``criterions/m3p_downstream.py``); they are saved and loaded like any other head.
"""
import torch
import torch.nn.functional as F

DUAL_TEXT_HEAD = "dual_text"
DUAL_IMAGE_HEAD = "dual_image"


def add_dual_heads(model, dim):
    """Register the two projection heads (dense -> tanh -> dim) on an M3PModel; ``dim`` 0: none."""
    for name in (DUAL_TEXT_HEAD, DUAL_IMAGE_HEAD) if dim > 0 else ():
        if name not in model.classification_heads:
            model.register_classification_head(name, num_classes=dim)


def has_dual_heads(model):
    heads = getattr(model, "classification_heads", {})
    return DUAL_TEXT_HEAD in heads and DUAL_IMAGE_HEAD in heads


def embed_text(model, src_tokens):
    """B x T text (``<s> ... </s>``) -> B x dim unit vectors, the text through the encoder alone."""
    first = model.encoder.read_positions(src_tokens, first=True)  # the head pools position 0 alone
    x, _ = model.encoder.extract_features(src_tokens, positions=first)
    return F.normalize(model.classification_heads[DUAL_TEXT_HEAD](x).float(), dim=-1)


def embed_images(model, regions, region_boxes, region_padding_mask, bos):
    """B images -> B x dim unit vectors: ``<s>`` and the regions, no words."""
    cls = torch.full((regions.size(0), 1), bos, dtype=torch.long, device=regions.device)
    first = model.encoder.read_positions(cls, regions.size(1), first=True)
    x, _ = model.encoder.extract_features(cls, regions, region_boxes, region_padding_mask, positions=first)
    return F.normalize(model.classification_heads[DUAL_IMAGE_HEAD](x).float(), dim=-1)


def contrastive_loss(text_emb, image_emb, image_ids, temperature):
    """Symmetric InfoNCE over a batch of matched (text, image) rows, summed over rows.

    Rows showing the same image (two captions of it, or one caption in two languages) are not
    negatives of each other: their off-diagonal logits are masked out. Returns (loss, ncorrect),
    ncorrect counting texts whose best image in the batch is their own.
    """
    logits = text_emb @ image_emb.t() / temperature
    same = image_ids.unsqueeze(0) == image_ids.unsqueeze(1)
    eye = torch.eye(len(image_ids), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(image_ids), device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.t(), target, reduction="sum"))
    with torch.no_grad():
        ncorrect = (logits.argmax(1) == target).sum()
    return loss, ncorrect
