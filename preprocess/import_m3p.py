"""Import the official M3P release (microsoft/M3P, XLM-style keys) as a model that computes the reference's function.

    m3p-import-m3p checkpoint.pth m3p-release/ --spm xlmr.base/sentencepiece.bpe.model

writes ``m3p-release/{model.pt,dict.txt,sentencepiece.bpe.model}`` like ``m3p-import-xlmr``. The
model is ``--arch m3p_reference_base`` (models/m3p.py): regions first, positions and the embedding
LayerNorm over the joint sequence, LayerNorm epsilon 1e-12, XLM's masked-LM projection, a linear
MRM regression head and the release's language embedding (``--langs`` from its ``lang2id``). Those
options live in the checkpoint's args, so every path that loads it (M3PHub, m3p-retrieval-eval,
m3p-downstream-eval, ``--pretrained-checkpoint``) computes what the reference computes:

* text only (the reference's ``crossfwd``, text stream, with ``langs``): token + position (from
  row 0) + language embedding, LayerNorm, the layers;
* image + text (``jointfwd``): R regions then the text, positions 0 .. R + T - 1 over both, the
  region embedding's LayerNorm then the joint one, no language embedding;
* heads (``predict``): matching on position 0 of the joint sequence (``pooled_layer`` tanh pooler
  + ``seq_relationship``), masked LM (hidden x token embeddings + ``pred_layer.proj.bias``), MRM
  regression (``mrfr_dense``) and classification (``transformer_obj`` + ``pred_obj_layer``).

The release is a ``torch.save`` of the reference trainer's dict: ``model`` (``encoder`` /
``decoder`` for an encoder-decoder run; the encoder is imported) with keys possibly prefixed
``module.``, ``params``, optimizer states. Key names and the forward passes were read from the
reference code (src/model/transformer.py):

    embeddings.weight                      -> encoder.sentence_encoder.embed_tokens.weight
    position_embeddings.weight             -> ...embed_positions.weight (row p -> row 2 + p: fairseq
                                              numbers positions from pad + 1)
    cross_lang_embeddings.weight           -> ...embed_positions.embed_langs.weight
    layer_norm_emb                         -> ...layernorm_embedding
    attentions.i.{q,k,v,out}_lin           -> ...layers.i.self_attn.{q,k,v,out}_proj
    layer_norm1.i / ffns.i.lin1 / ffns.i.lin2 / layer_norm2.i
                                           -> ...self_attn_layer_norm / fc1 / fc2 / final_layer_norm
    pred_layer.proj.bias                   -> encoder.lm_head.bias (the weight is the embedding, tied)
    image_embeddings.image_embeddings      -> encoder.region_embed.feat_proj
    image_embeddings.image_location_embeddings -> encoder.region_embed.box_proj
    image_embeddings.LayerNorm             -> encoder.region_embed.layer_norm
    mrfr_dense                             -> encoder.mrm_feat_head.out_proj
    transformer_obj.{dense,LayerNorm} + pred_obj_layer.proj -> encoder.mrm_cls_head
    pooled_layer.dense + seq_relationship  -> classification_heads.vlm

Left out, named in one warning: modules the reference's retrieval and pre-training paths never
call (see UNUSED). The reference's data loader L2-normalizes region features and 5-d boxes before
the model; this model does that itself, so it takes raw features and ``spatial_features`` boxes.
The dictionary is XLM-R's (fairseq order, ``<s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>`` last, as the
reference's XLMRTokenizer numbers it), so ``--spm`` is XLM-R's sentencepiece model.
"""
import argparse
import logging
import os
import re
import sys
from collections import Counter

import torch

from m3p_fairseq.errors import command, require_file
from m3p_fairseq.models.m3p import split_langs
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
    "mrfr_dense": "encoder.mrm_feat_head.out_proj",
    "transformer_obj.dense": "encoder.mrm_cls_head.dense",
    "transformer_obj.LayerNorm": "encoder.mrm_cls_head.layer_norm",
    "pred_obj_layer.proj": "encoder.mrm_cls_head.out_proj",
    "pooled_layer.dense": "classification_heads.vlm.dense",
    "seq_relationship": "classification_heads.vlm.out_proj",
    "layer_norm_emb": SE + "layernorm_embedding",
    "cross_lang_embeddings": SE + "embed_positions.embed_langs",
}
# modules of the reference's TransformerModel that its retrieval and understanding pre-training never call
UNUSED = {
    "encoder_attn": "cross-attention, decoding only",
    "layer_norm15": "cross-attention LayerNorm, decoding only",
    "refine_embeddings": "AoA refiner, --refine_image False in the reference's runs",
    "cross_alignment": "image fusion, not in jointfwd",
    "image_embeddings.image_distbution_embeddings": "class-distribution input, not passed by jointfwd",
    "pooled_layer2": "CLCM head, --cross_clcm_steps off by default",
    "seq_relationship2": "CLCM head, --cross_clcm_steps off by default",
    "latent_transforms": "latent space, --is_latent off by default",
    "original_transforms": "latent space, --is_latent off by default",
    "lang_embeddings": "XLM's language embedding, commented out in the reference",
}
_UNUSED = re.compile(r"^(" + "|".join(re.escape(k) for k in UNUSED) + r")\.")


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


def convert(state, source):
    """Reference keys -> ours for everything that maps; returns (ours, unused, unknown keys)."""
    ours, unused, unknown = {}, [], []
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
            ours[SE + "embed_positions.weight"] = torch.cat([v.new_zeros(PAD + 1, v.shape[1]), v])
        elif k == "pred_layer.proj.bias":
            ours["encoder.lm_head.bias"] = v
        elif k == "pred_layer.proj.weight":
            if not torch.equal(v, state["embeddings.weight"]):
                raise WeightImportError(f"{source}: pred_layer.proj.weight is not tied to the embeddings "
                                        f"(--share_inout_emb False): not supported")
        elif _UNUSED.match(k):
            unused.append(k)
        else:
            unknown.append(k)
    return ours, unused, unknown


def release_langs(state, params, langs, source):
    """The language of each row of the release's language embedding, in id order ("" without one)."""
    table = state.get("cross_lang_embeddings.weight")
    if table is None:
        return ""
    if not langs:
        lang2id = params.get("lang2id") or {}
        if sorted(lang2id.values()) != list(range(table.shape[0])):
            raise WeightImportError(f"{source}: params['lang2id'] does not name the {table.shape[0]} rows of "
                                    f"cross_lang_embeddings; give --langs (the languages in id order)")
        langs = [lang for lang, _ in sorted(lang2id.items(), key=lambda kv: kv[1])]
    if len(langs) != table.shape[0]:
        raise WeightImportError(f"{source}: --langs names {len(langs)} languages, cross_lang_embeddings has "
                                f"{table.shape[0]} rows")
    return ",".join(langs)


def import_m3p(path, out_dir, spm_path, heads=None, langs=None, trust=False):
    state, params = read_release(path, trust)
    emb = state["embeddings.weight"]
    heads = heads or params.get("n_heads")
    if not heads:
        raise WeightImportError(f"{path}: the checkpoint has no params['n_heads']; give --heads")
    if params.get("refine_image") or params.get("refine_encoder"):
        logger.warning(f"{path}: its params say the AoA refiner was on; the reference's published fine-tuning "
                       f"and evaluation commands turn it off (--refine_image False), which is what this model computes")
    layers = 1 + max(int(m.group(1)) for m in (re.match(r"attentions\.(\d+)\.", k) for k in state) if m)
    feat = state.get("image_embeddings.image_embeddings.weight")
    classes = state.get("pred_obj_layer.proj.weight")
    dims = Dims(layers=layers, embed_dim=emb.shape[1], ffn_dim=state["ffns.0.lin1.weight"].shape[0], heads=int(heads),
                max_positions=state["position_embeddings.weight"].shape[0],
                activation_fn="gelu" if params.get("gelu_activation", True) else "relu",
                dropout=params.get("dropout", 0.1), attention_dropout=params.get("attention_dropout", 0.1),
                region_feat_dim=feat.shape[1] if feat is not None else 2048,
                num_region_classes=classes.shape[0] if classes is not None else 1600,
                arch="m3p_reference_base", langs=release_langs(state, params, langs, path))
    ours, unused, unknown = convert(state, path)
    with weights.Staging(out_dir) as staging:
        weights.write_dict_from_spm(spm_path, staging.file("dict.txt"))
        dictionary = weights.load_dictionary(staging.file("dict.txt"))
        if emb.shape[0] != len(dictionary):
            raise WeightImportError(f"{path}: {emb.shape[0]} token embeddings, but {spm_path} gives a dictionary of "
                                    f"{len(dictionary)} (is --spm XLM-R's sentencepiece model?)")
        args, task, model = weights.build_model(staging.path, dims)
        ours["encoder.lm_head.weight"] = ours[SE + "embed_tokens.weight"]
        own = model.state_dict()
        missing = sorted(k for k in own if k not in ours and not k.endswith(".version"))
        if missing:  # every weight of the reference function must come from the release
            raise WeightImportError(f"{path}: no weights for {', '.join(missing[:5])} in the release")
        for k in own:
            ours.setdefault(k, own[k])  # fairseq's version buffers
        weights.load_strict(model, ours, path)
        if unused:
            groups = Counter(next(u for u in UNUSED if k.startswith(u + ".")) for k in unused)
            logger.warning(f"{path}: left out, unused by the reference's retrieval and pre-training: "
                           + "; ".join(f"{g} ({n} tensors: {UNUSED[g]})" for g, n in sorted(groups.items())))
        if unknown:
            logger.warning(f"{path}: {len(unknown)} keys not in the reference layout were left out, e.g. {unknown[0]!r}")
        note = {"source": os.path.abspath(path), "format": "m3p-release", "unused": len(unused),
                "unknown": len(unknown)}
        weights.save_model_folder(staging, args, model, note, spm_path)
    return dims


@command("m3p-import-m3p")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="the release's .pth (understanding weights)")
    p.add_argument("out_dir", help="receives model.pt, dict.txt, sentencepiece.bpe.model")
    p.add_argument("--spm", required=True, help="XLM-R's sentencepiece.bpe.model (the release's vocabulary)")
    p.add_argument("--heads", type=int, default=None, help="attention heads, when the checkpoint has no params")
    p.add_argument("--langs", default=None,
                   help="languages of the release's language embedding in id order (default: its params['lang2id'])")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load pickled objects that safe loading refuses (only for files you trust: they can run code)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    require_file(a.spm, "sentencepiece model (--spm)")
    dims = import_m3p(a.checkpoint, a.out_dir, a.spm, a.heads, split_langs(a.langs), a.trust_checkpoint)
    print(f"{a.out_dir}: {dims.layers} layers x {dims.embed_dim}, {dims.heads} heads, the reference's function; "
          f"to train from it: --arch {dims.arch}" + (f" --langs {dims.langs}" if dims.langs else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
