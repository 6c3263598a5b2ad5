"""M3P's generation model: an encoder-decoder whose decoder reuses the encoder's layers.

Both halves are fairseq's Transformer (``TransformerEncoder`` / ``TransformerDecoder``); what is
written here only wires them:

* the encoder is the joint text + region encoder of the understanding model
  (``JointTransformerEncoder`` with ``RegionEmbedding``, imported from ``m3p.py``), kept under
  ``encoder.sentence_encoder`` so its parameter names are XLM-R's;
* the decoder shares with the encoder the token embeddings (also its output projection), the
  position and language embeddings, the embedding LayerNorm and, layer by layer, the whole
  layer except the cross-attention and its LayerNorm (the reference choice): self-attention,
  its LayerNorm, the feed-forward block and the final LayerNorm are the same module objects;
* a language embedding is added to every text token of the encoder and every token of the
  decoder. Source and target language ids are separate arguments (IC and xDAE feed the same id
  to both; MMT feeds different ones). Regions carry no language (nor position) embedding.

The target language travels in ``encoder_out["tgt_lang"]``: fairseq's ``SequenceGenerator``
calls the decoder with ``encoder_out`` only, so that is where the decoder finds it, and
``reorder_encoder_out`` reorders it with the beams. The decoder keeps no state of its own beyond
the attention caches fairseq's ``MultiheadAttention`` reorders itself, so fairseq's
``reorder_incremental_state`` is used unchanged.
"""
import logging

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoder, register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerModel
from fairseq.modules import LearnedPositionalEmbedding
from fairseq.modules.transformer_sentence_encoder import init_bert_params

from ..errors import M3PInputError
from .m3p import (HubFromPretrained, JointTransformerEncoder, RegionEmbedding, TextPositionalEmbedding, add_shared_args,
                  region_sizes_from_task, set_defaults, split_langs)

logger = logging.getLogger(__name__)

# parts of a decoder layer that are the encoder layer's own modules (reference choice)
SHARED_LAYER_PARTS = ("self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
# parts the decoder keeps for itself
DECODER_ONLY_PARTS = ("encoder_attn", "encoder_attn_layer_norm")


class M3PSeq2SeqEncoder(FairseqEncoder):
    """Text and/or regions -> fairseq's encoder_out dict (+ ``tgt_lang`` for the decoder)."""

    def __init__(self, args, dictionary, embed_tokens, num_langs):
        super().__init__(dictionary)
        self.sentence_encoder = JointTransformerEncoder(args, dictionary, embed_tokens)
        if not isinstance(self.sentence_encoder.embed_positions, LearnedPositionalEmbedding):
            raise M3PInputError("m3p_seq2seq needs learned positions (--encoder-learned-pos)")
        self.sentence_encoder.embed_positions = TextPositionalEmbedding(
            self.sentence_encoder.embed_positions, num_langs, langs_required=True)
        self.region_embed = RegionEmbedding(args.region_feat_dim, args.encoder_embed_dim)
        # a non-pad id marks real region slots in the joint token sequence; its embedding is never read
        self.region_slot = dictionary.unk()

    def forward(self, src_tokens, src_lengths=None, src_lang=None, tgt_lang=None, regions=None, region_boxes=None,
                region_padding_mask=None, return_all_hiddens=False):
        """
        Args:
            src_tokens: B x T text (may be B x 0 when the source is regions only)
            src_lang, tgt_lang: B language ids (``tgt_lang`` defaults to ``src_lang``)
            regions, region_boxes, region_padding_mask: B x R x D, B x R x 5, B x R (True = pad)
        """
        if src_lang is None:
            raise ValueError("src_lang is required")
        tgt_lang = src_lang if tgt_lang is None else tgt_lang
        tokens, region_emb = src_tokens, None
        if regions is not None:
            slots = src_tokens.new_full(regions.shape[:2], self.region_slot)
            if region_padding_mask is not None:
                slots = slots.masked_fill(region_padding_mask, self.dictionary.pad())
            tokens = torch.cat([src_tokens, slots], dim=1)
            region_emb = self.region_embed(regions, region_boxes)
        with self.sentence_encoder.embed_positions.given(langs=src_lang):
            out = self.sentence_encoder(tokens, src_lengths=src_lengths, return_all_hiddens=return_all_hiddens,
                                        token_embeddings=region_emb)
        out["tgt_lang"] = [tgt_lang]
        return out

    def reorder_encoder_out(self, encoder_out, new_order):
        out = self.sentence_encoder.reorder_encoder_out(encoder_out, new_order)
        out["tgt_lang"] = [encoder_out["tgt_lang"][0].index_select(0, new_order)]
        return out

    def max_positions(self):
        return self.sentence_encoder.max_positions()


class M3PSeq2SeqDecoder(TransformerDecoder):
    """fairseq's TransformerDecoder built normally, then tied to the encoder's modules."""

    def __init__(self, args, dictionary, embed_tokens, encoder: JointTransformerEncoder):
        super().__init__(args, dictionary, embed_tokens, no_encoder_attn=False)
        self.embed_positions = encoder.embed_positions
        self.layernorm_embedding = encoder.layernorm_embedding
        for enc_layer, dec_layer in zip(encoder.layers, self.layers):
            for part in SHARED_LAYER_PARTS:
                setattr(dec_layer, part, getattr(enc_layer, part))
        assert_ties(encoder, self)

    def extract_features(self, prev_output_tokens, encoder_out, incremental_state=None, full_context_alignment=False,
                         alignment_layer=None, alignment_heads=None):
        if encoder_out is None or not encoder_out.get("tgt_lang"):
            raise ValueError("encoder_out lacks tgt_lang: the decoder needs the M3PSeq2SeqEncoder's output")
        with self.embed_positions.given(langs=encoder_out["tgt_lang"][0]):
            return super().extract_features(prev_output_tokens, encoder_out, incremental_state,
                                            full_context_alignment, alignment_layer, alignment_heads)


def assert_ties(encoder, decoder):
    """Every tie of the generation model, checked by identity (as fairseq's roberta/enc_dec.py)."""
    assert decoder.embed_tokens is encoder.embed_tokens
    assert decoder.output_projection.weight is encoder.embed_tokens.weight
    assert decoder.embed_positions is encoder.embed_positions
    assert decoder.layernorm_embedding is encoder.layernorm_embedding
    assert len(decoder.layers) == len(encoder.layers)
    for enc_layer, dec_layer in zip(encoder.layers, decoder.layers):
        for part in SHARED_LAYER_PARTS:
            assert getattr(dec_layer, part) is getattr(enc_layer, part), part
        assert dec_layer.encoder_attn is not None and dec_layer.encoder_attn is not enc_layer.self_attn
        assert dec_layer.encoder_attn_layer_norm is not enc_layer.self_attn_layer_norm
        assert dec_layer.encoder_attn_layer_norm is not enc_layer.final_layer_norm


@register_model("m3p_seq2seq")
class M3PSeq2SeqModel(HubFromPretrained, TransformerModel):
    """The generation model (xDAE, IC, DIC pre-training; captioning, MMT, NTG)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_shared_args(parser, ["region_feat_dim"], "languages of the language embedding, in id order (default: "
                                                     "the languages of the pre-training data)")

    @classmethod
    def build_model(cls, args, task):
        m3p_seq2seq_base_architecture(args)
        region_sizes_from_task(args, task, ["region_feat_dim"])
        if not split_langs(args.langs):
            raise M3PInputError("--langs: the generation model needs its list of languages")
        for enc, dec in (("encoder_embed_dim", "decoder_embed_dim"), ("encoder_layers", "decoder_layers"),
                         ("encoder_attention_heads", "decoder_attention_heads"),
                         ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim"),
                         ("encoder_normalize_before", "decoder_normalize_before")):
            if getattr(args, enc) != getattr(args, dec):
                raise M3PInputError(f"--{dec.replace('_', '-')} {getattr(args, dec)} differs from "
                                    f"--{enc.replace('_', '-')} {getattr(args, enc)}: the decoder shares the "
                                    f"encoder's layers")
        if task.source_dictionary is not task.target_dictionary and task.source_dictionary != task.target_dictionary:
            raise M3PInputError("m3p_seq2seq shares one dictionary between encoder and decoder")
        dictionary = task.source_dictionary
        embed_tokens = cls.build_embedding(args, dictionary, args.encoder_embed_dim)
        encoder = cls.build_encoder(args, dictionary, embed_tokens)
        decoder = cls.build_decoder(args, dictionary, embed_tokens, encoder=encoder)
        model = cls(args, encoder, decoder)
        # XLM-R's initialization everywhere; the language vectors start at zero, so a model
        # whose text weights come from XLM-R starts out computing what XLM-R computes
        model.apply(init_bert_params)
        nn.init.zeros_(encoder.sentence_encoder.embed_positions.embed_langs.weight)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return M3PSeq2SeqEncoder(args, src_dict, embed_tokens, num_langs=len(split_langs(args.langs)))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens, encoder=None):
        if encoder is None:
            raise ValueError("the M3P decoder is built from its encoder (build_decoder(..., encoder=...))")
        return M3PSeq2SeqDecoder(args, tgt_dict, embed_tokens, encoder.sentence_encoder)

    @property
    def langs(self):
        return split_langs(self.args.langs)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, src_lang=None, tgt_lang=None, regions=None,
                region_boxes=None, region_padding_mask=None, return_all_hiddens=False, features_only=False,
                alignment_layer=None, alignment_heads=None):
        """
        Args:
            src_tokens: B x T source text (``<s> ... </s>``; B x 0 for regions only)
            prev_output_tokens: B x T' decoder input (``</s> y1 ... y_{n-1}``, fairseq's convention)
            src_lang, tgt_lang: B language ids of source and target
            regions, region_boxes, region_padding_mask: the image, when there is one
        Returns:
            (B x T' x V logits, extra) as fairseq's TransformerDecoder
        """
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, src_lang=src_lang, tgt_lang=tgt_lang,
                                   regions=regions, region_boxes=region_boxes, region_padding_mask=region_padding_mask,
                                   return_all_hiddens=return_all_hiddens)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                            src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)

    def upgrade_state_dict_named(self, state_dict, name):
        """An encoder-only state dict (XLM-R's text encoder, or an understanding model's) loads:
        decoder entries of shared modules come from their encoder twins, modules XLM-R lacks
        (regions, languages, cross-attention) keep their initialization, and understanding-only
        heads are dropped. A state dict with decoder entries must match exactly."""
        prefix = name + "." if name else ""
        if not any(k.startswith(prefix + "decoder.") for k in state_dict):
            self._fill_from_encoder_only(state_dict, prefix)
        super().upgrade_state_dict_named(state_dict, name)

    def _fill_from_encoder_only(self, state_dict, prefix):
        for k in [k for k in state_dict if k.startswith((prefix + "encoder.lm_head.", prefix + "encoder.mrm_",
                                                         prefix + "classification_heads."))]:
            del state_dict[k]
        own = self.state_dict(keep_vars=True)
        name_of = {}
        for k, v in own.items():
            name_of.setdefault(id(v), []).append(k)
        fresh = []
        for k, v in own.items():
            if prefix + k in state_dict:
                continue
            twin = next((t for t in name_of[id(v)] if prefix + t in state_dict), None)
            if twin is not None:
                state_dict[prefix + k] = state_dict[prefix + twin]
            else:
                state_dict[prefix + k] = v.detach().clone()
                fresh.append(k)
        if fresh:
            logger.info(f"encoder-only state dict: {len(fresh)} entries keep their initialization "
                        f"(regions, languages, cross-attention)")


def m3p_seq2seq_base_architecture(args):
    """XLM-R's text encoder layout (learned positions, no embedding scale, embedding LayerNorm,
    post-LN, GELU) with the paper's generation settings; every decoder size follows the encoder's."""
    # the paper's 8 heads (XLM-R base has 12; q/k/v shapes are the same, so its weights still load)
    set_defaults(args, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=8,
                 encoder_normalize_before=False, encoder_learned_pos=True)
    set_defaults(args, **{f"decoder_{part}": getattr(args, f"encoder_{part}") for part in (
        "layers", "embed_dim", "ffn_embed_dim", "attention_heads", "normalize_before", "learned_pos")})
    set_defaults(args, decoder_output_dim=args.decoder_embed_dim, decoder_input_dim=args.decoder_embed_dim,
                 activation_fn="gelu", dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                 no_scale_embedding=True, layernorm_embedding=True, share_all_embeddings=True,
                 share_decoder_input_output_embed=True,
                 # XLM-R's position table (512 + offset) so its weights load; inputs and captions stay <= 128
                 max_source_positions=512, max_target_positions=128, langs=None)
    from fairseq.models.transformer.transformer_legacy import base_architecture

    base_architecture(args)


@register_model_architecture("m3p_seq2seq", "m3p_seq2seq_base")
def m3p_seq2seq_base(args):
    """The paper's generation model: 12 + 12 layers, 768 hidden, 8 heads, GELU, dropout 0.1."""
    m3p_seq2seq_base_architecture(args)


@register_model_architecture("m3p_seq2seq", "m3p_seq2seq_tiny")
def m3p_seq2seq_tiny(args):
    """For tests and the demo on the embedded world: 2 + 2 layers, 128 hidden, 4 heads, no dropout: m3p_tiny's
    text encoder, so it starts from an m3p_tiny checkpoint (``m3p-import-xlmr --generation``) as
    m3p_seq2seq_base starts from XLM-R base."""
    set_defaults(args, encoder_layers=2, encoder_embed_dim=128, encoder_ffn_embed_dim=512, encoder_attention_heads=4,
                 dropout=0.0, attention_dropout=0.0, max_source_positions=130)
    m3p_seq2seq_base_architecture(args)
