"""M3P's understanding model: XLM-R's encoder with an image-region stream and the pre-training heads.

The text side is fairseq's RoBERTa encoder unchanged (parameter names are XLM-R's, so XLM-R
weights load as they are). Regions enter through ``RegionEmbedding`` (FC of the L2-normalized
feature + FC of the L2-normalized 5-d box, summed, layer-normed) and are appended after the
text: the joint sequence is ``<s> text </s> [regions]``, so the first position is the [CLS] the
VLM head reads. Regions get no position embedding (their order carries no meaning; their boxes
say where they are). Heads: masked LM tied to the token embeddings (RoBERTa's), MRM regression
to the raw feature, MRM classification over the detector's K classes, VLM match / no match.
"""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel, base_architecture
from fairseq.models.transformer import TransformerEncoder
from fairseq.modules import LayerNorm
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr

from ..errors import M3PInputError

logger = logging.getLogger(__name__)

VLM_HEAD = "vlm"


class RegionEmbedding(nn.Module):
    """Image regions -> the encoder's embedding space (the only input path written here)."""

    def __init__(self, feat_dim, embed_dim, box_dim=5):
        super().__init__()
        self.feat_proj = nn.Linear(feat_dim, embed_dim)
        self.box_proj = nn.Linear(box_dim, embed_dim)
        self.layer_norm = LayerNorm(embed_dim)

    def forward(self, features, boxes):
        # reference choice: both inputs L2-normalized before their projections. In float32: F.normalize's
        # eps (1e-12) is 0 in fp16, so a zero vector (padding, an MRM-zeroed region) would become 0/0 = NaN
        x = self.feat_proj(F.normalize(features.float(), dim=-1).type_as(features)) \
            + self.box_proj(F.normalize(boxes.float(), dim=-1).type_as(boxes))
        return self.layer_norm(x)


class RegionHead(nn.Module):
    """dense -> activation -> LayerNorm -> projection, as RoBERTa's LM head, for region targets."""

    def __init__(self, embed_dim, output_dim, activation_fn):
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.layer_norm = LayerNorm(embed_dim)
        self.out_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x):
        return self.out_proj(self.layer_norm(self.activation_fn(self.dense(x))))


class JointTransformerEncoder(TransformerEncoder):
    """fairseq's TransformerEncoder over the joint text + region sequence.

    ``src_tokens`` is the joint sequence: the text, then one placeholder per region (pad where the
    image has fewer regions, so the padding mask covers them). ``token_embeddings``, when given,
    holds the already-embedded regions (B x R x C): the text part is embedded the stock way
    (tokens + learned positions + embedding LayerNorm) and the regions are appended after it.
    Without ``token_embeddings`` this is exactly the text encoder of XLM-R.
    """

    def forward_embedding(self, src_tokens, token_embedding=None):
        if token_embedding is None:
            return super().forward_embedding(src_tokens)
        num_text = src_tokens.size(1) - token_embedding.size(1)
        x_text, embed_text = super().forward_embedding(src_tokens[:, :num_text])
        x = torch.cat([x_text, self.dropout_module(token_embedding.type_as(x_text))], dim=1)
        return x, torch.cat([embed_text, token_embedding.type_as(embed_text)], dim=1)


class M3PEncoder(RobertaEncoder):
    def __init__(self, args, dictionary):
        super().__init__(args, dictionary)
        dim = args.encoder_embed_dim
        self.region_embed = RegionEmbedding(args.region_feat_dim, dim)
        self.mrm_feat_head = RegionHead(dim, args.region_feat_dim, args.activation_fn)
        self.mrm_cls_head = RegionHead(dim, args.num_region_classes, args.activation_fn)
        for m in (self.region_embed, self.mrm_feat_head, self.mrm_cls_head):
            m.apply(init_bert_params)
        # a non-pad id marks real region slots in the joint token sequence; its embedding is never read
        self.region_slot = dictionary.unk()

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = JointTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def extract_features(self, src_tokens, regions=None, region_boxes=None, region_padding_mask=None,
                         return_all_hiddens=False, **unused):
        """Returns (B x (T + R) x C features, extra). Text only when ``regions`` is None."""
        if regions is None:
            return super().extract_features(src_tokens, return_all_hiddens=return_all_hiddens)
        bsz, num_regions = regions.shape[:2]
        slots = src_tokens.new_full((bsz, num_regions), self.region_slot)
        if region_padding_mask is not None:
            slots = slots.masked_fill(region_padding_mask, self.dictionary.pad())
        joint = torch.cat([src_tokens, slots], dim=1)
        region_emb = self.region_embed(regions, region_boxes)
        return super().extract_features(joint, return_all_hiddens=return_all_hiddens, token_embeddings=region_emb)


@register_model("m3p")
class M3PModel(RobertaModel):
    """The understanding model. ``forward`` returns a dict with the outputs the caller asks for."""

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument("--region-feat-dim", type=int, metavar="D",
                            help="size of a region feature (default: the region store's)")
        parser.add_argument("--num-region-classes", type=int, metavar="K",
                            help="detector classes for MRM classification (default: the region store's)")
        parser.add_argument("--vlm-inner-dim", type=int, metavar="D", help="hidden size of the VLM head")

    @classmethod
    def build_model(cls, args, task):
        m3p_base_architecture(args)
        for name, value in (("region_feat_dim", getattr(task, "region_feat_dim", None)),
                            ("num_region_classes", getattr(task, "num_region_classes", None))):
            current = safe_getattr(args, name, None)
            if current is None:
                setattr(args, name, value if value is not None else {"region_feat_dim": 2048,
                                                                     "num_region_classes": 1600}[name])
            elif value is not None and current != value:
                raise M3PInputError(f"--{name.replace('_', '-')} {current} does not match the region store ({value})")
        if not hasattr(args, "max_positions"):
            args.max_positions = args.tokens_per_sample
        model = cls(args, M3PEncoder(args, task.source_dictionary))
        model.register_classification_head(VLM_HEAD, num_classes=1, inner_dim=args.vlm_inner_dim)
        return model

    def forward(self, src_tokens, regions=None, region_boxes=None, region_padding_mask=None,
                masked_tokens=None, masked_regions=None, vlm=False, features_only=False,
                return_all_hiddens=False, classification_head_name=None, **unused):
        """
        Args:
            src_tokens: B x T text (``<s> ... </s>``, right-padded)
            regions, region_boxes, region_padding_mask: B x R x D, B x R x 5, B x R (True = pad)
            masked_tokens: B x T bool, positions whose token the LM head predicts
            masked_regions: B x R bool, regions the MRM heads reconstruct
            vlm: also return the match logit of each pair (B,)
        Returns:
            dict with ``features`` (B x (T+R) x C) and, as asked, ``lm_logits`` (n x V),
            ``mrm_feat`` (n x D), ``mrm_cls`` (n x K), ``vlm_logits`` (B,), ``classification``.
        """
        x, extra = self.encoder.extract_features(src_tokens, regions, region_boxes, region_padding_mask,
                                                 return_all_hiddens=return_all_hiddens)
        out = {"features": x, "inner_states": extra.get("inner_states")}
        if features_only:
            return out
        num_text = src_tokens.size(1)
        if masked_tokens is not None:
            out["lm_logits"] = self.encoder.output_layer(x[:, :num_text], masked_tokens=masked_tokens)
        if masked_regions is not None:
            h = x[:, num_text:][masked_regions]
            out["mrm_feat"] = self.encoder.mrm_feat_head(h)
            out["mrm_cls"] = self.encoder.mrm_cls_head(h)
        if vlm:
            out["vlm_logits"] = self.classification_heads[VLM_HEAD](x).squeeze(-1)
        if classification_head_name is not None:
            out["classification"] = self.classification_heads[classification_head_name](x)
        return out

    def upgrade_state_dict_named(self, state_dict, name):
        prefix = name + "." if name != "" else ""
        # (old RoBERTa checkpoints, XLM-R's release among them, call the encoder "decoder.sentence_encoder":
        # fairseq renames those below; a generation model's own decoder has "decoder.layers")
        if any(k.startswith(prefix + "decoder.layers.") for k in state_dict):
            # --restore-file / --finetune-from-model with a generation checkpoint: say so in one line
            raise M3PInputError("the checkpoint holds an M3P generation model (m3p_seq2seq_*, it has a decoder); "
                                "this task needs an understanding model (m3p_*): give an understanding checkpoint")
        super().upgrade_state_dict_named(state_dict, name)
        # An XLM-R checkpoint has no region stream: start those modules from their initialization.
        for module_name in ("region_embed", "mrm_feat_head", "mrm_cls_head"):
            for k, v in getattr(self.encoder, module_name).state_dict().items():
                key = f"{prefix}encoder.{module_name}.{k}"
                if key not in state_dict:
                    state_dict[key] = v


def m3p_base_architecture(args):
    """The paper's understanding model: XLM-R base (12 x 768, 12 heads, GELU, dropout 0.1)."""
    args.max_positions = safe_getattr(args, "max_positions", 512)  # XLM-R's table; inputs stay <= 128
    args.vlm_inner_dim = safe_getattr(args, "vlm_inner_dim", None)
    args.pooler_dropout = safe_getattr(args, "pooler_dropout", 0.1)
    base_architecture(args)


@register_model_architecture("m3p", "m3p_base")
def m3p_base(args):
    m3p_base_architecture(args)


@register_model_architecture("m3p", "m3p_large")
def m3p_large(args):
    """XLM-R large's layout (24 x 1024, 16 heads)."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 24)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 1024)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 4096)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 16)
    m3p_base_architecture(args)


@register_model_architecture("m3p", "m3p_tiny")
def m3p_tiny(args):
    """For tests and the demo on the embedded world: 2 x 128, 4 heads, no dropout.

    Two layers, not four: trained from scratch (no XLM-R), VLM sits at chance until the model
    finds the word-region match; measured on the embedded world (VLM alone, batch 64, lr 1e-3),
    2 x 128 leaves chance after ~600 updates while 4 x 128 was still at chance after 1,500.
    """
    args.encoder_layers = safe_getattr(args, "encoder_layers", 2)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 4)
    args.dropout = safe_getattr(args, "dropout", 0.0)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.0)
    args.max_positions = safe_getattr(args, "max_positions", 130)
    m3p_base_architecture(args)
