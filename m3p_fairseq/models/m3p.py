"""M3P's understanding model: XLM-R's encoder with an image-region stream and the pre-training heads.

The text side is fairseq's RoBERTa encoder unchanged (parameter names are XLM-R's, so XLM-R
weights load as they are). Regions enter through ``RegionEmbedding`` (FC of the L2-normalized
feature + FC of the L2-normalized 5-d box, summed, layer-normed). Heads: masked LM tied to the
token embeddings, MRM regression to the raw feature, MRM classification over the detector's K
classes, VLM match / no match on the first position of the joint sequence; fine-tuning tasks add
theirs (IGLUE's: ``iglue_heads.py``).

How text and regions are joined (``--joint-layout``), and the details that differ between
XLM-R's layout and the reference code's (microsoft/M3P), are model options kept in the
checkpoint, so a checkpoint selects the function it was trained as:

* ``text-first`` (default, XLM-R's): ``<s> text </s> [regions]``; regions get no position
  embedding (their boxes say where they are) and skip the embedding LayerNorm, so the text part
  is embedded exactly as XLM-R embeds a sentence;
* ``regions-first`` (the reference's ``jointfwd``): ``[regions] <s> text </s>``; positions run
  over the whole joint sequence, regions included, and the embedding LayerNorm is applied to the
  joint sequence (after the region embedding's own LayerNorm). The VLM head pools position 0,
  the first region, as the reference's matching head does.

Also per checkpoint: the LayerNorm epsilon (``--layernorm-eps``; the reference uses 1e-12), the
masked-LM head (``--lm-head transform``: RoBERTa's dense + LayerNorm before the tied projection;
``linear``: the tied projection plus bias alone, as XLM's ``pred_layer``), the MRM regression head
(``--mrm-feat-head mlp`` or ``linear``, the reference's ``mrfr_dense``) and a language embedding
(``--langs``: one learned vector per language, added to every token of a text-only pass when the
batch says its language, as the reference's text stream adds ``cross_lang_embeddings``; joint
passes add none, as the reference's ``jointfwd``). ``m3p_reference_base`` sets the reference's.

Compute and memory (options of the model, not kept as a function of the checkpoint):

* the last encoder layer runs only at the positions the caller reads (``ReadPositions``;
  ``forward(read_only=True)``, as every training loss calls it): the masked tokens for the
  masked-LM objectives, the masked regions for MRM, the first position for VLM, retrieval and
  classification heads; other callers, feature extraction among them, get every position, and so
  does every caller with ``--full-last-layer``. Each position read gets the full layer's output
  (its query attends over every position's keys); with dropout on, the last layer's random draws
  are made over the positions computed, so they differ from a full layer's (the same distribution);
* ``--checkpoint-activations`` (fairseq's flag; ``--offload-activations`` moves the kept layer
  inputs to the CPU): fairseq's checkpoint wrapper around every layer of the joint encoder, text
  and regions alike, and torch's non-reentrant checkpoint around the region embedding (its inputs
  are data without gradient, which fairseq's reentrant wrapper would cut off from its weights'
  gradients); the same losses and gradients, the dropout draws replayed;
* ``--compile-layers``: each layer of the joint encoder under ``torch.compile`` (fused elementwise
  kernels); new shapes pay a compile first.
"""
import contextlib
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel, base_architecture
from fairseq.models.transformer import TransformerEncoder
from fairseq.modules import LayerNorm, LearnedPositionalEmbedding
from fairseq.modules.checkpoint_activations import checkpoint_wrapper, unwrap_checkpoint
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr
from torch.utils.checkpoint import checkpoint

from ..errors import M3PInputError
from .attention import SDPAMultiheadAttention, use_fused_attention
from .iglue_heads import start_poolers_from_vlm

logger = logging.getLogger(__name__)

VLM_HEAD = "vlm"
# compute and memory options (off by default); the first two are fairseq's names, as its transformer models
# have them (RoBERTa's argument list lacks them)
COMPUTE_SWITCHES = {
    "checkpoint-activations": "checkpoint activations at each layer of the joint encoder (and the region embedding): "
                              "recomputed in the backward pass, the same losses, less memory",
    "offload-activations": "checkpoint activations and keep the layers' inputs on the CPU (implies "
                           "--checkpoint-activations)",
    "full-last-layer": "compute the last encoder layer at every position; by default the training losses run it "
                       "only at the positions they read (the same outputs there, less compute)",
    "compile-layers": "run each layer of the joint encoder under torch.compile (fused elementwise kernels; every "
                      "new batch shape is compiled first)",
}
JOINT_LAYOUTS = ("text-first", "regions-first")
HEAD_KINDS = {"lm_head": ("transform", "linear"), "mrm_feat_head": ("mlp", "linear")}


def split_langs(value):
    """``"en,de"`` -> ``["en", "de"]`` (the form of --langs)."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


class TextPositionalEmbedding(LearnedPositionalEmbedding):
    """Learned positions, counted as fairseq counts them or given by the batch, plus an optional
    learned language vector.

    fairseq's Transformer adds ``embed_positions(tokens)`` to every token embedding before the
    embedding LayerNorm; what is added there reaches every token without touching the encoder's or
    decoder's forward. The caller says, for one pass, which language each row (B ids) or each token
    (B x T ids) is in, and which position each token has (B x T, fairseq's numbering: pad + 1 for
    the first, pad for padding; TLM restarts them on the second sentence, as XLM does) with
    ``with module.given(langs=..., positions=...):``. Without language ids the generation model
    fails (every pass of it has a language); the understanding model adds none (its joint passes
    carry no language). Position weights keep their name (``embed_positions.weight``).
    """

    def __init__(self, positions: LearnedPositionalEmbedding, num_langs=0, langs_required=False):
        super().__init__(positions.num_embeddings, positions.embedding_dim, positions.padding_idx)
        self.weight = positions.weight
        if num_langs:
            self.embed_langs = nn.Embedding(num_langs, positions.embedding_dim)
        self.langs_required = langs_required
        self._langs = self._positions = None

    @contextlib.contextmanager
    def given(self, langs=None, positions=None):
        if langs is None and self.langs_required:
            raise ValueError("language ids are required (src_lang / tgt_lang)")
        self._langs = langs if hasattr(self, "embed_langs") else None
        self._positions = positions
        try:
            yield
        finally:
            self._langs = self._positions = None

    def forward(self, input, incremental_state=None, positions=None):
        if positions is None and incremental_state is None and self._positions is not None:
            # (fairseq's forward refuses given positions when there is a padding index: look them up as it does)
            pos = F.embedding(self._positions, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                              self.scale_grad_by_freq, self.sparse)
        else:
            pos = super().forward(input, incremental_state=incremental_state, positions=positions)
        if self._langs is None:
            if self.langs_required:
                raise RuntimeError("language ids not set: call the encoder or decoder through its model")
            return pos
        langs = self._langs if self._langs.dim() == 2 else self._langs.unsqueeze(1)
        return pos + self.embed_langs(langs).type_as(pos)


REGION_SIZES = {"region_feat_dim": 2048, "num_region_classes": 1600}  # the usual Faster R-CNN's, if no store says


def add_shared_args(parser, region_sizes, langs_help):
    """What both models take: region sizes (--region-feat-dim / --num-region-classes) and --langs."""
    helps = {"region_feat_dim": ("D", "size of a region feature (default: the region store's)"),
             "num_region_classes": ("K", "detector classes for MRM classification (default: the region store's)")}
    for name in region_sizes:
        parser.add_argument("--" + name.replace("_", "-"), type=int, metavar=helps[name][0], help=helps[name][1])
    parser.add_argument("--langs", type=str, metavar="L1,L2,...", help=langs_help)


def region_sizes_from_task(args, task, names):
    """Region sizes not given come from the task's region store (else REGION_SIZES); given ones must match it."""
    for name in names:
        store = getattr(task, name, None)
        current = safe_getattr(args, name, None)
        if current is None:
            setattr(args, name, store if store is not None else REGION_SIZES[name])
        elif store is not None and current != store:
            raise M3PInputError(f"--{name.replace('_', '-')} {current} does not match the region store ({store})")


def set_layernorm_eps(module, eps):
    """Every LayerNorm under ``module`` (torch's or apex's fused one) gets epsilon ``eps``."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm) or type(m).__name__ == "FusedLayerNorm":
            m.eps = eps


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
    """dense -> activation -> LayerNorm -> projection, as RoBERTa's LM head, for region targets;
    with ``transform=False`` the projection alone (the reference's ``mrfr_dense``)."""

    def __init__(self, embed_dim, output_dim, activation_fn, transform=True):
        super().__init__()
        if transform:
            self.dense = nn.Linear(embed_dim, embed_dim)
            self.activation_fn = utils.get_activation_fn(activation_fn)
            self.layer_norm = LayerNorm(embed_dim)
        self.transform = transform
        self.out_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x):
        if self.transform:
            x = self.layer_norm(self.activation_fn(self.dense(x)))
        return self.out_proj(x)


class TiedProjectionHead(nn.Module):
    """Masked-LM logits as XLM's ``pred_layer``: hidden state x token embeddings + bias, no transform."""

    def __init__(self, weight, output_dim):
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(output_dim))

    def forward(self, features, masked_tokens=None, **unused):
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        return F.linear(features, self.weight) + self.bias


class ReadPositions:
    """The positions of each row at which the last encoder layer runs: ``index`` (B x S) holds each
    row's positions in order, padded with positions it does not read (S = the most any row reads);
    ``valid`` (B x S) marks the real ones. Built from a B x L mask (True = read)."""

    def __init__(self, mask):
        counts = mask.sum(1)
        width = max(int(counts.max()), 1) if mask.numel() else 1  # (one host sync per forward)
        self.length = mask.size(1)
        self.index = torch.argsort(~mask, dim=1, stable=True)[:, :width]
        self.valid = torch.arange(width, device=mask.device) < counts.unsqueeze(1)

    def gather(self, x):
        """L x B x C (the encoder's layout) -> S x B x C."""
        return x.gather(0, self.index.t().unsqueeze(-1).expand(-1, -1, x.size(-1)))

    def scatter(self, h):
        """B x S x C -> B x L x C, zero at the positions not computed (each row's index is a permutation's
        head, so padding slots land on positions not read, zeroed)."""
        h = h.masked_fill(~self.valid.unsqueeze(-1), 0.0)
        return h.new_zeros(h.size(0), self.length, h.size(2)).scatter(1, self.index.unsqueeze(-1).expand_as(h), h)


class ReadPositionsLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer that can run at some positions only: with ``keys`` (the layer's input at
    every position, L x B x C), ``x`` holds just the positions whose output is wanted (S x B x C); their
    self-attention runs over all L positions, and everything after it is per position, so each output
    is the full layer's at that position. Without ``keys``, fairseq's layer as it is."""

    def forward(self, x, encoder_padding_mask, attn_mask=None, keys=None):
        if keys is None:
            return super().forward(x, encoder_padding_mask, attn_mask)
        with self.self_attn.keys_from(self.self_attn_layer_norm(keys) if self.normalize_before else keys):
            return super().forward(x, encoder_padding_mask, attn_mask)


def _reads_positions(entry, offload):
    """The encoder layer in ``entry`` (itself, or inside fairseq's FSDP / checkpoint wrappers) becomes a
    ReadPositionsLayer: same object and parameters; a checkpoint wrapper is put back around the new forward."""
    layer = next(m for m in entry.modules() if isinstance(m, TransformerEncoderLayerBase))
    wrapped = hasattr(layer, "precheckpoint_forward")
    if wrapped:
        unwrap_checkpoint(layer)
        del layer.forward  # unwrapping left the old class's bound forward on the instance
    layer.__class__ = ReadPositionsLayer
    if wrapped:
        checkpoint_wrapper(layer, offload_to_cpu=offload)


class JointTransformerEncoder(TransformerEncoder):
    """fairseq's TransformerEncoder over the joint text + region sequence.

    ``src_tokens`` is the joint sequence: the text and one placeholder per region (pad where the
    image has fewer regions, so the padding mask covers them), in the order of
    ``args.joint_layout``. ``token_embeddings``, when given, holds the already-embedded regions
    (B x R x C). Text first: the text part is embedded the stock way (tokens + learned positions
    + embedding LayerNorm) and the regions are appended after it. Regions first: the regions and
    the text's token embeddings go through the stock embedding together (positions counted over
    both, one LayerNorm). Without ``token_embeddings`` this is exactly the text encoder of XLM-R.
    """

    def __init__(self, args, dictionary, embed_tokens, return_fc=False):
        super().__init__(args, dictionary, embed_tokens, return_fc=return_fc)
        self.regions_first = safe_getattr(args, "joint_layout", "text-first") == "regions-first"
        use_fused_attention(self)  # the same function, one fused self-attention call (models/attention.py)
        # the last layer can run at the positions a caller reads (reading()); fairseq's loop over the layers
        # calls it as every layer, a pre-hook hands it those positions and every position as keys
        self._read = None
        _reads_positions(self.layers[-1], self.cfg.offload_activations)
        self.layers[-1].register_forward_pre_hook(self._last_layer_at_read_positions, with_kwargs=True)
        if safe_getattr(args, "compile_layers", False):
            for layer in self.layers:
                # in place: the module and its parameter names stay
                layer.compile(backend=safe_getattr(args, "compile_backend", "inductor"))

    def reads_subsets(self):
        """Whether the last layer can run at some positions only (fused attention; no LayerDrop, which may skip it)."""
        attn = next(m for m in self.layers[-1].modules() if isinstance(m, TransformerEncoderLayerBase)).self_attn
        return self.encoder_layerdrop == 0 and isinstance(attn, SDPAMultiheadAttention) and attn.fusable()

    @contextlib.contextmanager
    def reading(self, read):
        """Within: the last layer runs at ``read``'s positions only (a ReadPositions, or None: all), and the
        encoder's output holds those (S x B x C)."""
        self._read = read
        try:
            yield
        finally:
            self._read = None

    def _last_layer_at_read_positions(self, layer, args, kwargs):
        if self._read is None:
            return None
        (x,) = args
        return (self._read.gather(x),), dict(kwargs, keys=x)

    def forward_embedding(self, src_tokens, token_embedding=None):
        if token_embedding is None:
            return super().forward_embedding(src_tokens)
        num_regions = token_embedding.size(1)
        if self.regions_first:
            # (the reference's image embedding has a dropout of its own before the joint one)
            text = self.embed_tokens(src_tokens[:, num_regions:])
            regions = self.dropout_module(token_embedding.type_as(text)) / self.embed_scale  # scaled back below
            return super().forward_embedding(src_tokens, token_embedding=torch.cat([regions, text], dim=1))
        num_text = src_tokens.size(1) - num_regions
        x_text, embed_text = super().forward_embedding(src_tokens[:, :num_text])
        x = torch.cat([x_text, self.dropout_module(token_embedding.type_as(x_text))], dim=1)
        return x, torch.cat([embed_text, token_embedding.type_as(embed_text)], dim=1)


class M3PEncoder(RobertaEncoder):
    def __init__(self, args, dictionary):
        super().__init__(args, dictionary)
        dim = args.encoder_embed_dim
        self.region_embed = RegionEmbedding(args.region_feat_dim, dim)
        self.mrm_feat_head = RegionHead(dim, args.region_feat_dim, args.activation_fn,
                                        transform=args.mrm_feat_head == "mlp")
        self.mrm_cls_head = RegionHead(dim, args.num_region_classes, args.activation_fn)
        for m in (self.region_embed, self.mrm_feat_head, self.mrm_cls_head):
            m.apply(init_bert_params)
        if not isinstance(self.sentence_encoder.embed_positions, LearnedPositionalEmbedding):
            raise M3PInputError("the understanding model needs learned positions (XLM-R's)")
        langs = split_langs(args.langs)
        self.sentence_encoder.embed_positions = TextPositionalEmbedding(self.sentence_encoder.embed_positions,
                                                                        len(langs))
        if langs:
            nn.init.zeros_(self.sentence_encoder.embed_positions.embed_langs.weight)
        self.regions_first = self.sentence_encoder.regions_first
        # a non-pad id marks real region slots in the joint token sequence; its embedding is never read
        self.region_slot = dictionary.unk()
        self.full_last_layer = safe_getattr(args, "full_last_layer", False)
        self.checkpoint_regions = safe_getattr(args, "checkpoint_activations", False)

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = JointTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if self.args.lm_head == "linear":
            if weight is None:
                raise M3PInputError("--lm-head linear projects onto the token embeddings: it needs tied weights")
            return TiedProjectionHead(weight, output_dim)
        return super().build_lm_head(embed_dim, output_dim, activation_fn, weight)

    def extract_features(self, src_tokens, regions=None, region_boxes=None, region_padding_mask=None,
                         src_lang=None, src_positions=None, return_all_hiddens=False, positions=None, **unused):
        """Returns (B x (T + R) x C features in the joint layout's order, extra); text only when
        ``regions`` is None. Text-only passes may say each token's language (``src_lang``: B or
        B x T ids, added by a model with --langs) and position (``src_positions``: B x T, fairseq's
        numbering; default: counted from the first token). ``positions`` (B x (T + R) bool, see
        read_positions): the positions the caller reads; the last layer runs there only and the
        features of the other positions are zero (None, the default: every position)."""
        read = None
        if positions is not None and not (self.full_last_layer or return_all_hiddens) \
                and self.sentence_encoder.reads_subsets():
            read = ReadPositions(positions)
        with self.sentence_encoder.reading(read):
            x, extra = self._extract_features(src_tokens, regions, region_boxes, region_padding_mask, src_lang,
                                              src_positions, return_all_hiddens)
        return (x if read is None else read.scatter(x)), extra

    def read_positions(self, src_tokens, num_regions=0, tokens=None, regions=None, first=False):
        """B x (T + R) bool in the joint layout's order: the text positions ``tokens`` (B x T), the regions
        ``regions`` (B x R) and, with ``first``, position 0 (what the VLM and classification heads pool)."""
        bsz, num_text = src_tokens.shape
        text = src_tokens.new_zeros(bsz, num_text, dtype=torch.bool) if tokens is None else tokens.expand(bsz, num_text)
        parts = [text]
        if num_regions:
            image = text.new_zeros(bsz, num_regions) if regions is None else regions
            parts = [image, text] if self.regions_first else [text, image]
        mask = torch.cat(parts, dim=1)  # (a new tensor: the caller's masks stay as they are)
        if first:
            mask[:, 0] = True
        return mask

    def _extract_features(self, src_tokens, regions, region_boxes, region_padding_mask, src_lang, src_positions,
                          return_all_hiddens):
        if regions is None:
            with self.sentence_encoder.embed_positions.given(langs=src_lang, positions=src_positions):
                return super().extract_features(src_tokens, return_all_hiddens=return_all_hiddens)
        bsz, num_regions = regions.shape[:2]
        slots = src_tokens.new_full((bsz, num_regions), self.region_slot)
        if region_padding_mask is not None:
            slots = slots.masked_fill(region_padding_mask, self.dictionary.pad())
        joint = torch.cat([slots, src_tokens] if self.regions_first else [src_tokens, slots], dim=1)
        if self.regions_first and joint.size(1) > self.max_positions():
            raise M3PInputError(f"{num_regions} regions + {src_tokens.size(1)} tokens: more than the model's "
                                f"{self.max_positions()} positions (regions-first layout numbers regions too)")
        if self.checkpoint_regions and torch.is_grad_enabled():
            region_emb = checkpoint(self.region_embed, regions, region_boxes, use_reentrant=False)
        else:
            region_emb = self.region_embed(regions, region_boxes)
        return super().extract_features(joint, return_all_hiddens=return_all_hiddens, token_embeddings=region_emb)

    def split_joint(self, features, num_text):
        """(text part, region part) of joint features (B x (T + R) x C) for T text tokens."""
        if self.regions_first:
            num_regions = features.size(1) - num_text
            return features[:, num_regions:], features[:, :num_regions]
        return features[:, :num_text], features[:, num_text:]


class HubFromPretrained:
    """``from_pretrained`` of the plugin's models: the plugin's hub around a checkpoint of the class (encode,
    extract_features; score and rank for the understanding model, caption and translate for the generation
    model), as RoBERTa's returns its RobertaHubInterface; see ``m3p_fairseq.hub``.

    The hub sits above the models (it loads checkpoints of every kind), so the models do not import it: it
    registers its loader here when it is imported, which importing the plugin (any of its modules) does."""

    hub_loader = None  # m3p_fairseq.hub.from_pretrained(model_class, path, checkpoint_file, data, **overrides)

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=None, **overrides):
        return HubFromPretrained.hub_loader(cls, model_name_or_path, checkpoint_file, data_name_or_path, **overrides)


@register_model("m3p")
class M3PModel(HubFromPretrained, RobertaModel):
    """The understanding model. ``forward`` returns a dict with the outputs the caller asks for."""

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_shared_args(parser, REGION_SIZES, "languages of a language embedding, in id order, added in text-only "
                                              "passes (default: none)")
        parser.add_argument("--vlm-inner-dim", type=int, metavar="D", help="hidden size of the VLM head")
        parser.add_argument("--joint-layout", choices=JOINT_LAYOUTS,
                            help="text-first (XLM-R's embedding for the text, regions appended without positions; "
                                 "default) or regions-first (the reference code's: positions and the embedding "
                                 "LayerNorm over the joint sequence)")
        parser.add_argument("--layernorm-eps", type=float, metavar="EPS",
                            help="epsilon of every LayerNorm (default 1e-5, fairseq's; the reference code's 1e-12)")
        parser.add_argument("--lm-head", choices=HEAD_KINDS["lm_head"],
                            help="masked-LM head: transform (RoBERTa's dense + LayerNorm, default) or linear "
                                 "(tied projection + bias, the reference code's)")
        parser.add_argument("--mrm-feat-head", choices=HEAD_KINDS["mrm_feat_head"],
                            help="MRM regression head: mlp (default) or linear (the reference code's)")
        for flag, text in COMPUTE_SWITCHES.items():
            parser.add_argument("--" + flag, action="store_true", help=text)
        parser.add_argument("--compile-backend", metavar="NAME",
                            help="torch.compile's backend for --compile-layers (default: inductor)")

    @classmethod
    def build_model(cls, args, task):
        m3p_base_architecture(args)
        region_sizes_from_task(args, task, REGION_SIZES)
        if not hasattr(args, "max_positions"):
            args.max_positions = args.tokens_per_sample
        model = cls(args, M3PEncoder(args, task.source_dictionary))
        model.register_classification_head(VLM_HEAD, num_classes=1, inner_dim=args.vlm_inner_dim)
        if args.layernorm_eps is not None:
            set_layernorm_eps(model, args.layernorm_eps)
        return model

    @property
    def langs(self):
        return split_langs(self.args.langs)

    def forward(self, src_tokens, regions=None, region_boxes=None, region_padding_mask=None, src_lang=None,
                src_positions=None, masked_tokens=None, masked_regions=None, vlm=False, features_only=False,
                return_all_hiddens=False, classification_head_name=None, read_only=False, read_positions=None,
                **unused):
        """
        Args:
            src_tokens: B x T text (``<s> ... </s>``, right-padded)
            regions, region_boxes, region_padding_mask: B x R x D, B x R x 5, B x R (True = pad)
            src_lang: B (or B x T) language ids, in --langs order; used by text-only passes of a
                model with a language embedding, ignored otherwise
            src_positions: B x T positions of a text-only pass (fairseq's numbering), when they do not
                simply count from the first token (TLM restarts them at the second sentence)
            masked_tokens: B x T bool, positions whose token the LM head predicts
            masked_regions: B x R bool, regions the MRM heads reconstruct
            vlm: also return the match logit of each pair (B,)
            read_only: run the last layer only at the positions the asked heads read (``masked_tokens``,
                ``masked_regions``, position 0 for ``vlm`` and ``classification_head_name``) and at
                ``read_positions`` (B x (T+R) bool, joint order: features the caller reads itself);
                ``features`` is then zero elsewhere (what the training losses pass; --full-last-layer
                computes every position all the same)
        Returns:
            dict with ``features`` (B x (T+R) x C, in the --joint-layout's order) and, as asked,
            ``lm_logits`` (n x V), ``mrm_feat`` (n x D), ``mrm_cls`` (n x K), ``vlm_logits`` (B,),
            ``classification``.
        """
        positions = None
        first = vlm or classification_head_name is not None
        if read_only and not features_only and (first or masked_tokens is not None or masked_regions is not None
                                                or read_positions is not None):
            positions = self.encoder.read_positions(src_tokens, 0 if regions is None else regions.size(1),
                                                    masked_tokens, masked_regions, first=first)
            if read_positions is not None:
                positions = positions | read_positions
        x, extra = self.encoder.extract_features(src_tokens, regions, region_boxes, region_padding_mask,
                                                 src_lang=src_lang, src_positions=src_positions,
                                                 return_all_hiddens=return_all_hiddens, positions=positions)
        out = {"features": x, "inner_states": extra.get("inner_states")}
        if features_only:
            return out
        text, region_part = self.encoder.split_joint(x, src_tokens.size(1))
        if masked_tokens is not None:
            out["lm_logits"] = self.encoder.output_layer(text, masked_tokens=masked_tokens)
        if masked_regions is not None:
            h = region_part[masked_regions]
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
        start_poolers_from_vlm(self, state_dict, prefix, VLM_HEAD)  # before fairseq fills missing heads at random
        super().upgrade_state_dict_named(state_dict, name)
        self._check_head_kinds(state_dict, prefix)
        # An XLM-R checkpoint has no region stream: start those modules from their initialization.
        for module_name in ("region_embed", "mrm_feat_head", "mrm_cls_head"):
            for k, v in getattr(self.encoder, module_name).state_dict().items():
                key = f"{prefix}encoder.{module_name}.{k}"
                if key not in state_dict:
                    state_dict[key] = v

    def _check_head_kinds(self, state_dict, prefix):
        """Weights of another head kind or language table would load half-initialized (or not at all):
        name the options the checkpoint was built with instead."""
        wrong = []
        for option, kinds in HEAD_KINDS.items():
            keys = [k for k in state_dict if k.startswith(f"{prefix}encoder.{option}.")]
            if keys:
                theirs = kinds[0] if any(k.startswith(f"{prefix}encoder.{option}.dense.") for k in keys) else kinds[1]
                if theirs != getattr(self.args, option):
                    wrong.append(f"--{option.replace('_', '-')} {theirs}")
        table = state_dict.get(f"{prefix}encoder.sentence_encoder.embed_positions.embed_langs.weight")
        if (table.size(0) if table is not None else 0) != len(self.langs):
            wrong.append(f"--langs with {table.size(0)} languages (the ones it was trained with, in order)"
                         if table is not None else "no --langs")
        if wrong:
            raise M3PInputError(f"the checkpoint's model was built with {', '.join(wrong)}; this one is not "
                                f"(for an imported M3P release: --arch m3p_reference_base and the --langs the "
                                f"import printed)")


def set_defaults(args, **defaults):
    """Each option the command line left unset takes its default (the body of every architecture function)."""
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


def m3p_base_architecture(args):
    """The paper's understanding model: XLM-R base (12 x 768, 12 heads, GELU, dropout 0.1), in XLM-R's layout."""
    set_defaults(args, max_positions=512,  # XLM-R's table; inputs stay <= 128
                 vlm_inner_dim=None, pooler_dropout=0.1, joint_layout="text-first",
                 layernorm_eps=None,  # None: each LayerNorm's own (fairseq: 1e-5)
                 lm_head="transform", mrm_feat_head="mlp", langs=None, compile_backend="inductor",
                 **{flag.replace("-", "_"): False for flag in COMPUTE_SWITCHES})
    if args.offload_activations:
        args.checkpoint_activations = True  # offloading implies checkpointing, as in fairseq's transformers
    base_architecture(args)


@register_model_architecture("m3p", "m3p_base")
def m3p_base(args):
    m3p_base_architecture(args)


@register_model_architecture("m3p", "m3p_reference_base")
def m3p_reference_base(args):
    """m3p_base computing the reference code's function (microsoft/M3P, what ``m3p-import-m3p``
    writes): regions first with positions and the embedding LayerNorm over the joint sequence,
    LayerNorm epsilon 1e-12, XLM's masked-LM projection, a linear MRM regression head."""
    set_defaults(args, joint_layout="regions-first", layernorm_eps=1e-12, lm_head="linear", mrm_feat_head="linear")
    m3p_base_architecture(args)


@register_model_architecture("m3p", "m3p_large")
def m3p_large(args):
    """XLM-R large's layout (24 x 1024, 16 heads)."""
    set_defaults(args, encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                 encoder_attention_heads=16)
    m3p_base_architecture(args)


@register_model_architecture("m3p", "m3p_tiny")
def m3p_tiny(args):
    """For tests and the demo on the embedded world: 2 x 128, 4 heads, no dropout.

    Two layers, not four: trained from scratch (no XLM-R), VLM sits at chance until the model
    finds the word-region match; measured on the embedded world (VLM alone, batch 64, lr 1e-3),
    2 x 128 leaves chance after ~600 updates while 4 x 128 was still at chance after 1,500.
    """
    set_defaults(args, encoder_layers=2, encoder_embed_dim=128, encoder_ffn_embed_dim=512, encoder_attention_heads=4,
                 dropout=0.0, attention_dropout=0.0, max_positions=130)
    m3p_base_architecture(args)
