"""Import XLM-R weights (fairseq release or HuggingFace) as M3P's understanding model.

    m3p-import-xlmr xlmr.base/ xlmr-m3p/          # fairseq: model.pt, dict.txt, sentencepiece.bpe.model
    m3p-import-xlmr xlm-roberta-base/ xlmr-m3p/   # HF: config.json, pytorch_model.bin | model.safetensors,
                                                  #     sentencepiece.bpe.model

writes ``xlmr-m3p/{model.pt,dict.txt,sentencepiece.bpe.model}`` (see preprocess/weights.py); the
text encoder reproduces the source's hidden states, the region stream and the MRM/VLM heads start
from their initialization. Sizes come from the source (base, large, or any other).
``--generation --langs en,de,...`` writes the generation model instead (encoder and shared decoder
from the same weights; cross-attention and the language vectors start fresh, the region stream too
unless the source has one). The source may also be an M3P understanding checkpoint (fairseq-train's
``checkpoint_*.pt`` as model.pt beside the data's dict.txt and sentencepiece.bpe.model): the generation
model then starts from it, its region stream included, as the demo's starts from its stand-in for XLM-R.

HuggingFace -> fairseq differs in three places, handled here:
  * HF adds ``token_type_embeddings[0]`` to every token; fairseq has no token types, so that row
    is folded into the position table (both are added before the embedding LayerNorm);
  * HF's position table has ``max_position_embeddings`` rows, fairseq's ``max_positions + pad + 1``;
    both number positions ``pad + 1 + i`` for the i-th non-pad token, so rows map one to one;
  * HF ties ``lm_head.decoder`` to the word embeddings and keeps the bias in ``lm_head.bias``;
    fairseq's head is the embedding matrix itself plus ``encoder.lm_head.bias``.
HF's pooler (``pooler.dense``) has no counterpart in fairseq's XLM-R and is left out.
"""
import argparse
import json
import logging
import os
import re
import shutil
import sys
import tarfile

import torch

from m3p_fairseq.errors import command
from preprocess import weights
from preprocess.weights import Dims, WeightImportError

logger = logging.getLogger(__name__)

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
                  "relu": "relu", "tanh": "tanh"}
HF_MODEL_TYPES = ("xlm-roberta", "roberta", "camembert")

_HF_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}
_HF_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# HF keys with no fairseq counterpart: the pooler, and buffers older transformers saved
_HF_IGNORED = re.compile(r"^(pooler\..*|embeddings\.position_ids|embeddings\.token_type_ids|lm_head\.decoder\.bias)$")


def detect(src):
    """'fairseq' or 'hf' from the files in ``src``; one line naming the folder otherwise."""
    if os.path.isfile(src) and tarfile.is_tarfile(src):
        raise WeightImportError(f"{src}: a tar archive (the download as it is), not a model folder: unpack it "
                                f"(tar -xzf {os.path.basename(src)}) and give the folder inside (model.pt, dict.txt, "
                                f"sentencepiece.bpe.model)")
    if not os.path.isdir(src):
        raise WeightImportError(f"{src}: not a folder (expected a fairseq XLM-R or HuggingFace model folder)")
    if os.path.isfile(os.path.join(src, "config.json")):
        return "hf"
    if os.path.isfile(os.path.join(src, "model.pt")) and os.path.isfile(os.path.join(src, "dict.txt")):
        return "fairseq"
    raise WeightImportError(f"{src}: neither a fairseq XLM-R folder (model.pt + dict.txt) "
                            f"nor a HuggingFace one (config.json)")


# ---- HuggingFace -------------------------------------------------------------------------------

def _hf_weight_files(src):
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index_path = os.path.join(src, index)
        if os.path.isfile(index_path):  # sharded (large models)
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            if not shards:
                raise WeightImportError(f"{index_path}: empty weight_map")
            return [os.path.join(src, s) for s in shards]
        if os.path.isfile(os.path.join(src, single)):
            return [os.path.join(src, single)]
    raise WeightImportError(f"{src}: no model.safetensors or pytorch_model.bin")


def _load_hf_file(path, trust):
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightImportError(f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)")
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise WeightImportError(f"{path}: not a safetensors file ({str(e).splitlines()[0][:200]})")
    state = weights.load_torch(path, trust)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightImportError(f"{path}: expected a state dict of tensors")
    return state


def read_hf_config(src):
    path = os.path.join(src, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightImportError(f"{path}: not a JSON model config ({e.__class__.__name__})")
    if not isinstance(cfg, dict):
        raise WeightImportError(f"{path}: expected a JSON object")
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise WeightImportError(f"{path}: model_type {model_type!r} is not XLM-R's (expected one of {', '.join(HF_MODEL_TYPES)})")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
               if not isinstance(cfg.get(k), int)]
    if missing:
        raise WeightImportError(f"{path}: no integer {missing[0]!r} (an XLM-R config.json has it)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise WeightImportError(f"{path}: position_embedding_type {cfg['position_embedding_type']!r}; only 'absolute' maps to fairseq")
    if cfg.get("pad_token_id", 1) != 1:
        raise WeightImportError(f"{path}: pad_token_id {cfg['pad_token_id']}; fairseq's dictionary has <pad> at 1")
    act = cfg.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise WeightImportError(f"{path}: hidden_act {act!r} has no fairseq counterpart")
    eps = cfg.get("layer_norm_eps", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        logger.warning(f"{path}: layer_norm_eps {eps}, fairseq uses 1e-5; hidden states will differ slightly")
    return cfg


def hf_to_fairseq(state, cfg, source):
    """HF XLM-R state dict -> fairseq names under ``encoder.`` (the understanding model's)."""
    pad = cfg.get("pad_token_id", 1)
    # XLMRobertaForMaskedLM saves "roberta.*" + "lm_head.*", XLMRobertaModel saves bare names
    state = {(k[len("roberta."):] if k.startswith("roberta.") else k): v for k, v in state.items()}
    se = "encoder.sentence_encoder."
    out = {}
    for k, v in state.items():
        if _HF_IGNORED.match(k):
            continue
        m = _HF_LAYER_RE.match(k)
        if m and m.group(2) in _HF_LAYER:
            out[f"{se}layers.{m.group(1)}.{_HF_LAYER[m.group(2)]}.{m.group(3)}"] = v
        elif k == "embeddings.word_embeddings.weight":
            out[se + "embed_tokens.weight"] = v
        elif k == "embeddings.position_embeddings.weight":
            out[se + "embed_positions.weight"] = v.clone()
        elif k.startswith("embeddings.LayerNorm."):
            out[se + "layernorm_embedding." + k.rsplit(".", 1)[1]] = v
        elif k == "embeddings.token_type_embeddings.weight":
            continue  # folded below
        elif k.startswith("lm_head.dense.") or k.startswith("lm_head.layer_norm."):
            out["encoder." + k] = v
        elif k == "lm_head.bias":
            out["encoder.lm_head.bias"] = v
        elif k == "lm_head.decoder.weight":
            continue  # tied to the word embeddings; checked below
        else:
            raise WeightImportError(f"{source}: key {k!r} has no counterpart in XLM-R's fairseq layout "
                                    f"(is this an XLM-R / RoBERTa checkpoint?)")
    for need in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"):
        if need not in state:
            raise WeightImportError(f"{source}: no {need!r} (is this an XLM-R / RoBERTa checkpoint?)")
    tt = state.get("embeddings.token_type_embeddings.weight")
    if tt is not None:
        if tt.shape[0] > 1:
            logger.warning(f"{source}: {tt.shape[0]} token types; M3P feeds type 0 only, as XLM-R does")
        out[se + "embed_positions.weight"] += tt[0]
    if "lm_head.bias" not in state and "lm_head.decoder.bias" in state:
        out["encoder.lm_head.bias"] = state["lm_head.decoder.bias"]
    dec = state.get("lm_head.decoder.weight")
    if dec is not None and not torch.equal(dec, state["embeddings.word_embeddings.weight"]):
        raise WeightImportError(f"{source}: lm_head.decoder.weight is not tied to the word embeddings; "
                                f"M3P's LM head is the embedding matrix (as XLM-R's)")
    num_pos = out[se + "embed_positions.weight"].shape[0]
    if num_pos <= pad + 1:
        raise WeightImportError(f"{source}: position table of {num_pos} rows is too small")
    return out


def hf_dims(cfg, state_fs, region_feat_dim, num_region_classes):
    pos = state_fs["encoder.sentence_encoder.embed_positions.weight"].shape[0]
    return Dims(layers=cfg["num_hidden_layers"], embed_dim=cfg["hidden_size"], ffn_dim=cfg["intermediate_size"],
                heads=cfg["num_attention_heads"], max_positions=pos - cfg.get("pad_token_id", 1) - 1,
                activation_fn=HF_ACTIVATIONS[cfg.get("hidden_act", "gelu")],
                dropout=cfg.get("hidden_dropout_prob", 0.1),
                attention_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
                **region_sizes({}, None, region_feat_dim=region_feat_dim, num_region_classes=num_region_classes))


def check_hf_tokenizer(src, dictionary):
    """If the folder has a tokenizer.json (HF fast tokenizer), its vocabulary must be our dictionary's order."""
    path = os.path.join(src, "tokenizer.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            model = json.load(f).get("model", {})
    except (OSError, ValueError):
        raise WeightImportError(f"{path}: not a JSON tokenizer file")
    vocab = model.get("vocab")
    if model.get("type") != "Unigram" or not isinstance(vocab, list):
        return  # another tokenizer kind: nothing to compare piece by piece
    for i in range(dictionary.nspecial, min(len(vocab), len(dictionary)) - 1):  # <mask> last, checked by size
        piece = vocab[i][0] if isinstance(vocab[i], (list, tuple)) else vocab[i]
        if piece != dictionary[i]:
            raise WeightImportError(f"{path}: token {i} is {piece!r}, the sentencepiece model's dict.txt has "
                                    f"{dictionary[i]!r} (tokenizer and sentencepiece.bpe.model disagree)")


def import_hf(src, staging, region_feat_dim, num_region_classes, trust=False):
    cfg = read_hf_config(src)
    spm_path = weights.find_spm(src)
    if spm_path is None:
        raise WeightImportError(f"{src}: no sentencepiece.bpe.model (the HF folder of xlm-roberta-* has one; "
                                f"copy it next to config.json)")
    state = {}
    for path in _hf_weight_files(src):
        state.update(_load_hf_file(path, trust))
    source = _hf_weight_files(src)[0]
    fs = hf_to_fairseq(state, cfg, source)
    weights.write_dict_from_spm(spm_path, staging.file("dict.txt"))
    dictionary = weights.load_dictionary(staging.file("dict.txt"))
    rows = fs["encoder.sentence_encoder.embed_tokens.weight"].shape[0]
    if rows != len(dictionary):
        raise WeightImportError(f"{source}: {rows} token embeddings, but {spm_path} gives a dictionary of "
                                f"{len(dictionary)} (4 specials + pieces + <mask>)")
    check_hf_tokenizer(src, dictionary)
    dims = hf_dims(cfg, fs, region_feat_dim, num_region_classes)
    return dims, fs, spm_path, {"source": os.path.abspath(src), "format": "huggingface"}


# ---- fairseq -----------------------------------------------------------------------------------

def fairseq_source_args(state, source):
    args = state.get("args")
    if args is None and state.get("cfg") is not None:
        args = state["cfg"].get("model") if isinstance(state["cfg"], dict) else getattr(state["cfg"], "model", None)
    if args is None:
        raise WeightImportError(f"{source}: a fairseq checkpoint needs 'args' or 'cfg' (neither found)")
    get = (lambda k, d=None: args.get(k, d)) if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    return get


# the region stream of an M3P checkpoint (an understanding model trained here, e.g. the demo's stand-in for
# XLM-R): its sizes are the source's, as the text sizes are
REGION_SIZES = {"region_feat_dim": ("encoder.region_embed.feat_proj.weight", 1),
                "num_region_classes": ("encoder.mrm_cls_head.out_proj.weight", 0)}
REGION_DEFAULTS = {"region_feat_dim": 2048, "num_region_classes": 1600}


def region_sizes(model_state, source, **given):
    """{region_feat_dim, num_region_classes}: the source's where it has a region stream (a given size must agree),
    else the given ones, else the usual detector's (2048-d features, 1,600 Visual Genome classes)."""
    out = {}
    for name, (key, axis) in REGION_SIZES.items():
        theirs = model_state[key].shape[axis] if key in model_state else None
        ours = given.get(name)
        if theirs is not None and ours is not None and ours != theirs:
            raise WeightImportError(f"{source}: --{name.replace('_', '-')} {ours}, but the checkpoint's region stream "
                                    f"has {theirs} ({key})")
        out[name] = theirs or ours or REGION_DEFAULTS[name]
    return out


def import_fairseq(src, staging, region_feat_dim, num_region_classes, trust=False):
    source = os.path.join(src, "model.pt")
    state = weights.load_torch(source, trust)
    if not isinstance(state, dict) or "model" not in state:
        raise WeightImportError(f"{source}: not a fairseq checkpoint (no 'model' entry)")
    get = fairseq_source_args(state, source)
    model_state = dict(state["model"])
    # sizes from the weights, which cannot disagree with themselves; heads only exist in the args
    prefix = next((p for p in ("decoder.sentence_encoder.", "encoder.sentence_encoder.")
                   if p + "embed_tokens.weight" in model_state), None)
    if prefix is None:
        raise WeightImportError(f"{source}: no sentence_encoder.embed_tokens.weight (not a RoBERTa/XLM-R checkpoint)")
    embed = model_state[prefix + "embed_tokens.weight"]
    layers = 1 + max([int(m.group(1)) for m in (re.match(re.escape(prefix) + r"layers\.(\d+)\.", k)
                                                 for k in model_state) if m] or [-1])
    fc1 = model_state.get(prefix + "layers.0.fc1.weight")
    if layers == 0 or fc1 is None:
        raise WeightImportError(f"{source}: no transformer layers under {prefix}layers")
    heads = get("encoder_attention_heads")
    if heads is None:
        raise WeightImportError(f"{source}: args lack encoder_attention_heads")
    pad = 1
    spm_path = weights.find_spm(src)
    if spm_path is None:
        raise WeightImportError(f"{src}: no sentencepiece.bpe.model")
    shutil.copyfile(os.path.join(src, "dict.txt"), staging.file("dict.txt"))
    dictionary = weights.load_dictionary(staging.file("dict.txt"))
    if embed.shape[0] != len(dictionary):
        raise WeightImportError(f"{source}: {embed.shape[0]} token embeddings, but {src}/dict.txt gives "
                                f"{len(dictionary)} (4 specials + lines + <mask>)")
    dims = Dims(layers=layers, embed_dim=embed.shape[1], ffn_dim=fc1.shape[0], heads=int(heads),
                max_positions=model_state[prefix + "embed_positions.weight"].shape[0] - pad - 1,
                activation_fn=get("activation_fn", "gelu") or "gelu", dropout=get("dropout", 0.1),
                attention_dropout=get("attention_dropout", 0.1),
                normalize_before=bool(get("encoder_normalize_before", False)),
                **region_sizes(model_state, source, region_feat_dim=region_feat_dim,
                               num_region_classes=num_region_classes))
    return dims, model_state, spm_path, {"source": os.path.abspath(src), "format": "fairseq"}


# ---- both --------------------------------------------------------------------------------------

def import_xlmr(src, out_dir, region_feat_dim=None, num_region_classes=None, trust=False, generation_langs=None):
    """Convert ``src`` (fairseq or HF XLM-R folder) into ``out_dir``; returns the model's Dims.

    With ``generation_langs`` ("en,de,..."), model.pt is the generation model (models/m3p_seq2seq.py):
    its encoder is XLM-R's, its decoder shares XLM-R's layers, and the language embedding has one
    (zero) vector per language, so its encoder computes what XLM-R computes.
    """
    kind = detect(src)
    with weights.Staging(out_dir) as staging:
        load = import_hf if kind == "hf" else import_fairseq
        dims, state, spm_path, note = load(src, staging, region_feat_dim, num_region_classes, trust)
        args, task, model = weights.build_model(staging.path, dims)
        # fairseq's own upgrade path: decoder.* -> encoder.*, old layer-norm names, heads not in the
        # model dropped, and (M3PModel) the region stream and VLM head added at their initialization
        own = model.state_dict()
        for k in own:
            # a missing version key reads as an old checkpoint to fairseq's upgrade, which then drops
            # the final LayerNorm of pre-norm models: give converted (HF) weights the current version
            if k.endswith(".version") and k not in state and "decoder" + k[len("encoder"):] not in state:
                state[k] = own[k]
        model.upgrade_state_dict(state)
        if "encoder.lm_head.dense.weight" not in state:  # HF XLMRobertaModel: no MLM head saved
            logger.warning(f"{src}: no MLM head in the source; encoder.lm_head starts from its initialization")
            for k in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
                state["encoder.lm_head." + k] = own["encoder.lm_head." + k]
        state["encoder.lm_head.weight"] = state["encoder.sentence_encoder.embed_tokens.weight"]
        weights.load_strict(model, state, note["source"])
        note.update(layers=dims.layers, embed_dim=dims.embed_dim, heads=dims.heads)
        if generation_langs:
            # the generation model's own upgrade fills the decoder's shared modules from their
            # encoder twins and keeps cross-attention and language vectors (zero) initialized
            args, model = weights.build_generation_model(staging.path, dims, generation_langs)
            state = dict(state)
            model.upgrade_state_dict(state)
            weights.load_strict(model, state, note["source"])
            note["model"] = "generation"
        weights.save_model_folder(staging, args, model, note, spm_path)
    return dims


@command("m3p-import-xlmr")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="fairseq XLM-R folder (model.pt, dict.txt, sentencepiece.bpe.model) or HuggingFace "
                               "folder (config.json, pytorch_model.bin or model.safetensors, sentencepiece.bpe.model)")
    p.add_argument("out_dir", help="receives model.pt, dict.txt, sentencepiece.bpe.model")
    p.add_argument("--region-feat-dim", type=int, default=None,
                   help="region feature size of your detector (default: the source's region stream if it has one, "
                        "as an M3P checkpoint does; else 2048)")
    p.add_argument("--num-region-classes", type=int, default=None,
                   help="detector classes, MRM classification (default: the source's if it has an MRM head; else 1600)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load pickled objects that safe loading refuses (only for files you trust: they can run code)")
    p.add_argument("--generation", action="store_true",
                   help="write the generation model (encoder + shared decoder) instead of the understanding model")
    p.add_argument("--langs", help="with --generation: the languages of its language embedding, comma-separated")
    a = p.parse_args(argv)
    if a.generation and not a.langs:
        p.error("--generation needs --langs (the generation model's languages, in id order)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    dims = import_xlmr(a.src, a.out_dir, a.region_feat_dim, a.num_region_classes, a.trust_checkpoint,
                       a.langs if a.generation else None)
    print(f"{a.out_dir}: {dims.layers} layers x {dims.embed_dim}, {dims.heads} heads", file=sys.stderr)


if __name__ == "__main__":
    main()
