"""Import the official M3P release (microsoft/M3P, XLM-style keys) as this project's understanding model.

    m3p-import-m3p m3p_under_weights/model.pth xlmr-m3p/ --spm xlmr.base/sentencepiece.bpe.model

writes ``xlmr-m3p/{model.pt,dict.txt,sentencepiece.bpe.model}`` like ``m3p-import-xlmr``.

The release is a ``torch.save`` of a dict whose ``model`` entry (``encoder`` for the generation
release) is the state dict of the reference ``TransformerModel`` (keys possibly prefixed
``module.``), optionally with ``params``. Key names and the forward pass were read from the
reference code (src/model/transformer.py); what maps where:

    embeddings.weight                      -> encoder.sentence_encoder.embed_tokens.weight
    position_embeddings.weight (rows from the layout below) -> ...embed_positions.weight
    layer_norm_emb                         -> ...layernorm_embedding
    attentions.i.{q,k,v,out}_lin           -> ...layers.i.self_attn.{q,k,v,out}_proj
    layer_norm1.i / ffns.i.lin1 / ffns.i.lin2 / layer_norm2.i
                                           -> ...self_attn_layer_norm / fc1 / fc2 / final_layer_norm
    pred_layer.proj.bias                   -> encoder.lm_head.bias (the weight is the embedding, tied)
    image_embeddings.image_embeddings      -> encoder.region_embed.feat_proj
    image_embeddings.image_location_embeddings -> encoder.region_embed.box_proj
    image_embeddings.LayerNorm             -> encoder.region_embed.layer_norm
    transformer_obj.{dense,LayerNorm} + pred_obj_layer.proj -> encoder.mrm_cls_head (same shape of head)
    pooled_layer.dense + seq_relationship  -> classification_heads.vlm (tanh pooler on the first token)

Left out, with a warning: ``encoder_attn.*`` / ``layer_norm15.*`` (cross-attention, used only when
decoding), ``cross_lang_embeddings`` / ``lang_embeddings`` (the understanding forward passes no
language), ``image_embeddings.image_distbution_embeddings`` (this model feeds no class
distribution), ``refine_embeddings.*`` and ``cross_alignment.*`` (off in the released runs).
Started from their initialization, with a warning: ``encoder.lm_head.{dense,layer_norm}`` (XLM's
``pred_layer`` projects the hidden state directly, fairseq's head transforms it first) and
``encoder.mrm_feat_head`` (the reference regresses with one linear layer, ``mrfr_dense``).

Sequence layout (``--layout``). The reference numbers positions from 0 in ``position_embeddings``;
fairseq numbers them from pad + 1 = 2, so row ``start + i`` of theirs becomes row ``2 + i`` of ours:
  * ``text`` (default): start = 0, the text-only stream (``crossfwd``), as xMLM and text tasks run;
    text-only hidden states then equal the reference's (up to LayerNorm eps 1e-12 vs 1e-5).
  * ``image-first``: start = ``--image-regions`` R, the joint stream (``jointfwd``: R regions, then
    the text, positions counted over both), so the text keeps the rows it was fine-tuned with.
    Our joint sequence is text first, regions without positions or the embedding LayerNorm, so
    joint outputs are close to, not equal to, the reference's: fine-tune before evaluating.
Assumptions (no release file could be opened here): the dictionary is XLM-R's (fairseq order,
``<s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>`` last, as the reference's XLMRTokenizer numbers it), so
``--spm`` is XLM-R's sentencepiece model; ``params['n_heads']`` gives the heads, else ``--heads``.
"""
import argparse
import logging
import os
import re
import sys
from collections import Counter

import torch

from m3p_fairseq.errors import M3PInputError
from preprocess import weights
from preprocess.weights import Dims, WeightImportError

logger = logging.getLogger(__name__)

PAD = 1
SE = "encoder.sentence_encoder."
_LAYER = re.compile(r"^(attentions|layer_norm1|ffns|layer_norm2)\.(\d+)\.(.+)$")
_LAYER_MAP = {"attentions": {"q_lin": "self_attn.q_proj", "k_lin": "self_attn.k_proj", "v_lin": "self_attn.v_proj",
                             "out_lin": "self_attn.out_proj"},
              "ffns": {"lin1": "fc1", "lin2": "fc2"}}
_DIRECT = {
    "image_embeddings.image_embeddings": "encoder.region_embed.feat_proj",
    "image_embeddings.image_location_embeddings": "encoder.region_embed.box_proj",
    "image_embeddings.LayerNorm": "encoder.region_embed.layer_norm",
    "transformer_obj.dense": "encoder.mrm_cls_head.dense",
    "transformer_obj.LayerNorm": "encoder.mrm_cls_head.layer_norm",
    "pred_obj_layer.proj": "encoder.mrm_cls_head.out_proj",
    "pooled_layer.dense": "classification_heads.vlm.dense",
    "seq_relationship": "classification_heads.vlm.out_proj",
    "layer_norm_emb": SE + "layernorm_embedding",
}
# modules the understanding model has no use for (see the module docstring)
_DROPPED = re.compile(r"^(encoder_attn|layer_norm15|cross_lang_embeddings|lang_embeddings|refine_embeddings|"
                      r"cross_alignment|image_embeddings\.image_distbution_embeddings|mrfr_dense)\b")


def read_release(path, trust=False):
    """(state dict without 'module.', params dict or {}) from a release file."""
    ckpt = weights.load_torch(path, trust)
    if not isinstance(ckpt, dict):
        raise WeightImportError(f"{path}: expected a dict (torch.save of the reference trainer), found {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt.get("encoder", ckpt))
    if not isinstance(state, dict) or not state:
        raise WeightImportError(f"{path}: no state dict under 'model' or 'encoder'")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for need in ("embeddings.weight", "position_embeddings.weight", "attentions.0.q_lin.weight", "ffns.0.lin1.weight"):
        if need not in state:
            raise WeightImportError(f"{path}: no {need!r}: not an M3P/XLM-style checkpoint")
    params = ckpt.get("params") or {}
    if not isinstance(params, dict):
        params = vars(params) if hasattr(params, "__dict__") else {}
    return state, params


def convert(state, start, source):
    """Reference keys -> ours for everything that maps; returns (ours, dropped, unmapped keys)."""
    ours, dropped, unknown = {}, [], []
    for k, v in state.items():
        m = _LAYER.match(k)
        if m:
            kind, i, rest = m.groups()
            mod, _, leaf = rest.rpartition(".")
            if kind in _LAYER_MAP:
                if mod not in _LAYER_MAP[kind]:
                    raise WeightImportError(f"{source}: {k!r}: unexpected sub-module {mod!r} "
                                            f"(per-language out_lin is not supported)")
                ours[f"{SE}layers.{i}.{_LAYER_MAP[kind][mod]}.{leaf}"] = v
            else:
                name = "self_attn_layer_norm" if kind == "layer_norm1" else "final_layer_norm"
                ours[f"{SE}layers.{i}.{name}.{rest}"] = v
            continue
        mod, _, leaf = k.rpartition(".")
        if mod in _DIRECT:
            ours[f"{_DIRECT[mod]}.{leaf}"] = v
        elif k == "embeddings.weight":
            ours[SE + "embed_tokens.weight"] = v
        elif k == "position_embeddings.weight":
            if start >= v.shape[0] - 1:
                raise WeightImportError(f"{source}: --image-regions {start} leaves no text positions "
                                        f"in a table of {v.shape[0]}")
            table = v[start:]
            ours[SE + "embed_positions.weight"] = torch.cat([v.new_zeros(PAD + 1, v.shape[1]), table])
        elif k == "pred_layer.proj.bias":
            ours["encoder.lm_head.bias"] = v
        elif k == "pred_layer.proj.weight":
            if not torch.equal(v, state["embeddings.weight"]):
                logger.warning(f"{source}: pred_layer.proj.weight is not tied to the embeddings; "
                               f"our LM head is the embedding matrix, the projection is left out")
        elif _DROPPED.match(k):
            dropped.append(k)
        else:
            unknown.append(k)
    return ours, dropped, unknown


def import_m3p(path, out_dir, spm_path, layout="text", image_regions=100, heads=None, trust=False):
    state, params = read_release(path, trust)
    start = 0 if layout == "text" else image_regions
    emb = state["embeddings.weight"]
    dim = emb.shape[1]
    heads = heads or params.get("n_heads")
    if not heads:
        raise WeightImportError(f"{path}: the checkpoint has no params['n_heads']; give --heads")
    layers = 1 + max(int(m.group(1)) for m in (re.match(r"attentions\.(\d+)\.", k) for k in state) if m)
    feat = state.get("image_embeddings.image_embeddings.weight")
    classes = state.get("pred_obj_layer.proj.weight")
    dims = Dims(layers=layers, embed_dim=dim, ffn_dim=state["ffns.0.lin1.weight"].shape[0], heads=int(heads),
                max_positions=state["position_embeddings.weight"].shape[0] - start,
                activation_fn="gelu" if params.get("gelu_activation", True) else "relu",
                dropout=params.get("dropout", 0.1), attention_dropout=params.get("attention_dropout", 0.1),
                region_feat_dim=feat.shape[1] if feat is not None else 2048,
                num_region_classes=classes.shape[0] if classes is not None else 1600)
    ours, dropped, unknown = convert(state, start, path)
    with weights.Staging(out_dir) as staging:
        weights.write_dict_from_spm(spm_path, staging.file("dict.txt"))
        dictionary = weights.load_dictionary(staging.file("dict.txt"))
        if emb.shape[0] != len(dictionary):
            raise WeightImportError(f"{path}: {emb.shape[0]} token embeddings, but {spm_path} gives a dictionary of "
                                    f"{len(dictionary)} (is --spm XLM-R's sentencepiece model?)")
        args, task, model = weights.build_model(staging.path, dims)
        own = model.state_dict()
        fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in ours
                        and k != "encoder.lm_head.weight" and not k.endswith(".version")})
        for k, v in own.items():
            ours.setdefault(k, v)
        ours["encoder.lm_head.weight"] = ours[SE + "embed_tokens.weight"]
        weights.load_strict(model, ours, path)
        if dropped:
            groups = Counter(k.split(".")[0] if not k.startswith("image_embeddings") else k.rsplit(".", 1)[0]
                             for k in dropped)
            logger.warning(f"{path}: left out (no counterpart in the understanding model): "
                           + ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())))
        if unknown:
            logger.warning(f"{path}: {len(unknown)} keys not in the reference layout were left out, e.g. {unknown[0]!r}")
        if fresh:
            logger.warning(f"{path}: started from their initialization: {', '.join(fresh)}")
        note = {"source": os.path.abspath(path), "format": "m3p-release", "layout": layout,
                "text_position_start": start, "dropped": len(dropped), "unknown": len(unknown)}
        weights.save_model_folder(staging, args, model, note, spm_path)
        staging.commit()
    return dims


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="the release's .pth (understanding weights)")
    p.add_argument("out_dir", help="receives model.pt, dict.txt, sentencepiece.bpe.model")
    p.add_argument("--spm", required=True, help="XLM-R's sentencepiece.bpe.model (the release's vocabulary)")
    p.add_argument("--layout", choices=("text", "image-first"), default="text",
                   help="which position rows the text keeps: the text-only stream's (0..) or the joint "
                        "image-first stream's (from --image-regions on)")
    p.add_argument("--image-regions", type=int, default=100, help="regions before the text in the image-first layout")
    p.add_argument("--heads", type=int, default=None, help="attention heads, when the checkpoint has no params")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load pickled objects that safe loading refuses (only for files you trust: they can run code)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if not os.path.isfile(a.spm):
            raise WeightImportError(f"{a.spm}: no such file")
        dims = import_m3p(a.checkpoint, a.out_dir, a.spm, a.layout, a.image_regions, a.heads, a.trust_checkpoint)
    except M3PInputError as e:
        sys.exit(f"m3p-import-m3p: {e}")
    print(f"{a.out_dir}: {dims.layers} layers x {dims.embed_dim}, {dims.heads} heads", file=sys.stderr)


if __name__ == "__main__":
    main()
