"""A small Python interface to a trained or imported M3P model, as fairseq's RoBERTa hub.

>>> from m3p_fairseq import M3PHub
>>> m3p = M3PHub.from_pretrained("xlmr-m3p")          # folder with model.pt, dict.txt, sentencepiece.bpe.model
>>> tokens = m3p.encode("Ein Hund läuft über die Wiese.")
>>> m3p.extract_features(tokens).shape                 # 1 x T x C, last layer
>>> m3p.decode(tokens)
'Ein Hund läuft über die Wiese.'

Text goes through sentencepiece, then the fairseq dictionary by piece (not by sentencepiece id),
so the same code serves XLM-R's model (whose ids are shifted by one against fairseq's) and the
models preprocess/build_spm.py trains.

An understanding checkpoint (``m3p_*``) scores and ranks image-text pairs; a generation
checkpoint (``m3p_seq2seq_*``) captions images and translates:

>>> gen = M3PHub.from_pretrained("checkpoints-gen/checkpoint_last.pt", data_name_or_path="data-bin/m3p")
>>> store = RegionStore("data-bin/m3p/regions/test.json")
>>> gen.caption("test_000003", "de", beam=10, store=store)
>>> gen.translate("a red dog left of a blue car", "test_000003", "en", "de", store=store)
>>> gen.extract_features(gen.encode("ein Hund", "de"), lang="de").shape   # the encoder's, 1 x T x C

A model fine-tuned on an IGLUE task (``--task m3p_xvnli``, ``m3p_xgqa``, ``m3p_marvl``) runs its head:

>>> gqa = M3PHub.from_pretrained("xgqa/checkpoint_best.pt", data_name_or_path="data-bin/xgqa")
>>> gqa.answer("n161313", "Is it overcast?", store=RegionStore("data-bin/xgqa/regions/test.en.json"))
>>> xvnli.entail("2487069642", "a woman pours drinks", store=store)   # {label: probability}
>>> marvl.reason("39-n-5", "39-n-2", "the pot on the right has a lid", store=store)   # P(true)

``M3PModel.from_pretrained`` and ``M3PSeq2SeqModel.from_pretrained`` return this hub too (as
``RobertaModel.from_pretrained`` returns a RobertaHubInterface), and refuse a checkpoint of the
other model kind. A method that does not fit the model kind (``score`` on a generation model,
``caption`` on an understanding model) raises an ``M3PInputError`` of one line.
"""
import os
from typing import List, Optional, Union

import torch
import torch.nn as nn

from . import checkpoints
from .errors import M3PInputError
from .models.m3p import HubFromPretrained


def _checkpoint_path(model_name_or_path, checkpoint_file):
    path = model_name_or_path if os.path.isfile(model_name_or_path) else os.path.join(model_name_or_path, checkpoint_file)
    if not os.path.isfile(path):
        raise M3PInputError(f"{path}: checkpoint not found")
    return path


def from_pretrained(model_class, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=None, **overrides):
    """``M3PModel.from_pretrained`` / ``M3PSeq2SeqModel.from_pretrained``: the hub around a checkpoint
    that holds a ``model_class`` (as RoBERTa's returns RobertaHubInterface); arguments as
    :meth:`M3PHub.from_pretrained`."""
    hub = M3PHub.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **overrides)
    if not isinstance(hub.model, model_class):
        found = type(hub.model).__name__
        raise M3PInputError(f"{_checkpoint_path(model_name_or_path, checkpoint_file)}: holds a {found}, not a "
                            f"{model_class.__name__}; load it with {found}.from_pretrained or M3PHub.from_pretrained")
    return hub


class M3PHub(nn.Module):
    """(cfg, task, model) plus the sentencepiece model; ``eval()`` mode after ``from_pretrained``."""

    def __init__(self, cfg, task, model, spm_path):
        super().__init__()
        import sentencepiece as spm

        self.cfg, self.task, self.model = cfg, task, model
        self.dictionary = task.source_dictionary
        self.spm_path = spm_path
        self.sp = spm.SentencePieceProcessor(model_file=spm_path)
        # a buffer that follows .to()/.cuda(), to know where inputs must go
        self.register_buffer("_float_tensor", torch.tensor([0], dtype=torch.float), persistent=False)

    @property
    def device(self):
        return self._float_tensor.device

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=None, **overrides):
        """Load a checkpoint with fairseq's checkpoint_utils.

        Args:
            model_name_or_path: a folder (holding ``checkpoint_file``) or the checkpoint file itself
            data_name_or_path: folder with dict.txt and sentencepiece.bpe.model (default: the
                checkpoint's folder; give the data folder for a fairseq-train checkpoint)
            overrides: further model/task options, as fairseq's ``arg_overrides``

        >>> M3PHub.from_pretrained("checkpoints/checkpoint_best.pt", data_name_or_path="data-bin/m3p")
        """
        path = _checkpoint_path(model_name_or_path, checkpoint_file)
        data = data_name_or_path or os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(os.path.join(data, "dict.txt")):
            raise M3PInputError(f"{data}: no dict.txt (pass data_name_or_path, the folder holding it)")
        spm_path = os.path.join(data, "sentencepiece.bpe.model")
        if not os.path.isfile(spm_path):
            raise M3PInputError(f"{data}: no sentencepiece.bpe.model")
        model, cfg, task = checkpoints.load_model(path, dict(overrides, data=os.path.abspath(data)))
        hub = cls(cfg, task, model, spm_path)
        hub.eval()
        return hub

    def max_positions(self):
        return self.model.max_positions()

    def _source_positions(self):
        """The longest input the (encoder of the) model takes: a generation model's max_positions is
        (source, target)."""
        limit = self.max_positions()
        return limit[0] if isinstance(limit, tuple) else limit

    def encode(self, text: str, lang: Optional[str] = None) -> torch.LongTensor:
        """``<s> pieces </s>`` as fairseq ids (1-D LongTensor).

        ``lang`` is accepted so one piece of code can drive this and the generation model; the
        understanding model, like XLM-R, reads no language id, so it changes nothing here.

        >>> m3p.encode("Hello world!")
        tensor([    0, 35378,  8999,    38,     2])
        """
        pieces = self.sp.encode(text, out_type=str)
        ids = [self.dictionary.bos()] + [self.dictionary.index(p) for p in pieces] + [self.dictionary.eos()]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, tokens: torch.LongTensor) -> Union[str, List[str]]:
        """Text of 1-D ``tokens`` (a list of texts for a 2-D batch); <s>, </s> and <pad> are dropped."""
        if tokens.dim() == 2:
            return [self.decode(t) for t in tokens]
        special = {self.dictionary.bos(), self.dictionary.eos(), self.dictionary.pad()}
        pieces = [self.dictionary[int(t)] for t in tokens if int(t) not in special]
        return self.sp.decode(pieces)

    def extract_features(self, tokens: torch.LongTensor, regions: Optional[torch.Tensor] = None,
                         boxes: Optional[torch.Tensor] = None, region_padding_mask: Optional[torch.Tensor] = None,
                         return_all_hiddens: bool = False, lang: Optional[str] = None):
        """Last-layer features, B x T x C (B x (T + R) x C with regions, in the model's --joint-layout order).

        Args:
            tokens: T or B x T ids (right-padded with <pad>)
            regions: R x D or B x R x D detector features (optional)
            boxes: R x 5 or B x R x 5 spatial vectors, as ``region_store.spatial_features`` makes them
            region_padding_mask: B x R, True where a region slot is padding
            return_all_hiddens: also return every layer's output (list of B x L x C, embeddings first)
            lang: the text's language: a generation model needs it; for an understanding model with a
                language embedding (--langs), text only

        >>> m3p.extract_features(m3p.encode("a dog")).shape
        torch.Size([1, 4, 768])
        """
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.size(-1) > self._source_positions():
            raise M3PInputError(f"{tokens.size(-1)} tokens, more than the model's {self._source_positions()} positions")
        kwargs = {}
        if regions is not None:
            if boxes is None:
                raise M3PInputError("regions given without boxes (the 5-d spatial vector of each region)")
            if regions.dim() == 2:
                regions, boxes = regions.unsqueeze(0), boxes.unsqueeze(0)
            if boxes.shape[:-1] != regions.shape[:-1] or boxes.size(-1) != 5:
                raise M3PInputError(f"boxes have shape {tuple(boxes.shape)}, expected {tuple(regions.shape[:-1]) + (5,)}")
            kwargs = {"regions": regions.to(self.device, torch.float), "region_boxes": boxes.to(self.device, torch.float)}
            if region_padding_mask is not None:
                kwargs["region_padding_mask"] = region_padding_mask.to(self.device)
        if self.kind == checkpoints.GENERATION:
            return self._encoder_features(tokens, lang, return_all_hiddens, **kwargs)
        if lang is not None and checkpoints.model_langs(self.model) and regions is None:
            # text-only passes of a model with a language embedding (an imported M3P release) add it
            kwargs["src_lang"] = torch.full((tokens.size(0),), self._lang_index(lang), device=self.device)
        out = self.model(tokens.to(self.device), features_only=True, return_all_hiddens=return_all_hiddens, **kwargs)
        if return_all_hiddens:
            return out["features"], [h.transpose(0, 1) for h in out["inner_states"]]
        return out["features"]

    def _encoder_features(self, tokens, lang, return_all_hiddens, **regions):
        """extract_features of a generation model: its encoder's output, which reads the language."""
        if lang is None:
            raise M3PInputError("extract_features of a generation model (m3p_seq2seq_*) needs lang= "
                                "(its encoder adds a language embedding)")
        tokens = tokens.to(self.device)
        out = self.model.encoder(tokens, src_lengths=tokens.ne(self.dictionary.pad()).sum(-1),
                                 src_lang=torch.full((tokens.size(0),), self._lang_index(lang), device=self.device),
                                 return_all_hiddens=return_all_hiddens, **regions)
        features = out["encoder_out"][0].transpose(0, 1)  # fairseq's encoders are T x B x C
        if return_all_hiddens:
            return features, [h.transpose(0, 1) for h in out["encoder_states"]]
        return features

    @property
    def kind(self):
        """checkpoints.UNDERSTANDING or GENERATION: which methods fit this hub."""
        return checkpoints.kind_of_model(self.model)

    def _require(self, kind, what):
        if self.kind != kind:
            use = {checkpoints.UNDERSTANDING: "score/rank/extract_features",
                   checkpoints.GENERATION: "caption/translate/extract_features"}[self.kind]
            raise M3PInputError(f"{what} need {checkpoints.describe(kind)}; this is an M3P {self.kind} model: "
                                f"use {use}")

    def _lang_index(self, lang):
        langs = checkpoints.model_langs(self.model)
        if lang not in langs:
            raise M3PInputError(f"language {lang!r} is not one of the model's ({','.join(langs)})")
        return langs.index(lang)

    # ---- image-text matching (the VLM head) ---------------------------------------------------------
    def _regions(self, regions, boxes=None, width=None, height=None, store=None):
        """Region input as model tensors: from an image id of a RegionStore, or from arrays."""
        import numpy as np

        from .data.region_store import spatial_features

        if isinstance(regions, str):
            if store is None:
                raise M3PInputError(f"image id {regions!r} given without a region store (store=RegionStore(path))")
            item = store.get(store.index_of(regions))
            feats, boxes = item["features"], spatial_features(item["boxes"], item["width"], item["height"])
        else:
            feats = np.asarray(regions, dtype=np.float32)
            if boxes is None:
                raise M3PInputError("regions given without boxes")
            boxes = np.asarray(boxes, dtype=np.float32)
            if boxes.shape[-1] == 4:  # pixel boxes: make the 5-d spatial vector
                if width is None or height is None:
                    raise M3PInputError("pixel boxes (x1, y1, x2, y2) need the image width and height")
                boxes = spatial_features(boxes, float(width), float(height))
        return torch.as_tensor(feats), torch.as_tensor(boxes)

    @torch.no_grad()
    def score(self, regions, text, lang=None, boxes=None, width=None, height=None, store=None):
        """Probability that ``text`` describes the image (the VLM head).

        ``regions``: an image id (with ``store``) or an R x D array with ``boxes`` (R x 5 spatial
        vectors, or R x 4 pixel boxes with ``width``/``height``).

        >>> from m3p_fairseq.data.region_store import RegionStore
        >>> m3p.score("test_000003", "a red dog left of a blue car", store=RegionStore("data/regions/test.json"))
        0.93
        """
        return self.rank(regions, [text], lang, boxes, width, height, store)[0][1]

    @torch.no_grad()
    def rank(self, regions, texts, lang=None, boxes=None, width=None, height=None, store=None):
        """Candidate texts for one image, best first: a list of (text, match probability)."""
        from fairseq.data import data_utils

        self._require(checkpoints.UNDERSTANDING, "score/rank use the VLM head: they")
        feats, spatial = self._regions(regions, boxes, width, height, store)
        tokens = data_utils.collate_tokens([self.encode(t, lang) for t in texts], self.dictionary.pad())
        n = len(texts)
        out = self.model(tokens.to(self.device), regions=feats[None].expand(n, -1, -1).to(self.device),
                         region_boxes=spatial[None].expand(n, -1, -1).to(self.device), vlm=True)
        probs = torch.sigmoid(out["vlm_logits"].float()).tolist()
        return sorted(zip(texts, probs), key=lambda x: -x[1])

    # ---- generation (the encoder-decoder): captions and multimodal translation ----------------------
    def _lang_id(self, lang):
        """The id of a language of the generation model (caption, translate)."""
        self._require(checkpoints.GENERATION, "caption/translate")
        return self._lang_index(lang)

    @torch.no_grad()
    def _generate(self, src_tokens, src_lang, tgt_lang, regions=None, spatial=None, beam=10, **gen_overrides):
        """Beam search with the task's generator (fairseq's SequenceGenerator), as fairseq-generate runs it."""
        import copy

        from omegaconf import open_dict

        gen_args = copy.deepcopy(self.cfg.generation)
        with open_dict(gen_args):
            gen_args.beam = beam
            for k, v in gen_overrides.items():
                setattr(gen_args, k, v)
        generator = self.task.build_generator([self.model], gen_args)
        src_tokens = src_tokens.unsqueeze(0).to(self.device)
        net_input = {"src_tokens": src_tokens, "src_lengths": torch.tensor([src_tokens.size(1)], device=self.device),
                     "src_lang": torch.tensor([self._lang_id(src_lang)], device=self.device),
                     "tgt_lang": torch.tensor([self._lang_id(tgt_lang)], device=self.device)}
        if regions is not None:
            net_input.update(regions=regions[None].to(self.device, torch.float),
                             region_boxes=spatial[None].to(self.device, torch.float),
                             region_padding_mask=torch.zeros(1, regions.size(0), dtype=torch.bool, device=self.device))
        hypos = self.task.inference_step(generator, [self.model], {"net_input": net_input})
        return self.decode(hypos[0][0]["tokens"])

    def caption(self, regions, lang, beam=10, boxes=None, width=None, height=None, store=None, **gen_overrides):
        """A caption of the image in ``lang`` (beam search; the paper's beam is 10).

        ``regions`` as for :meth:`score`: an image id with ``store``, or arrays with ``boxes``.
        ``gen_overrides`` are fairseq generation options (``max_len_b=30``, ``lenpen=1.0``, ...).

        >>> gen.caption("test_000003", "en", store=RegionStore("data-bin/m3p/regions/test.json"))
        'a red dog left of a blue car'
        """
        self._lang_id(lang)  # the right kind of model and a known language, before reading regions
        feats, spatial = self._regions(regions, boxes, width, height, store)
        empty = torch.zeros(0, dtype=torch.long)  # the source is the image alone
        return self._generate(empty, lang, lang, feats, spatial, beam, **gen_overrides)

    def translate(self, text, regions=None, src="en", tgt="de", beam=10, boxes=None, width=None, height=None,
                  store=None, **gen_overrides):
        """``text`` (in ``src``) translated into ``tgt``, with the image's regions when given (MMT).

        >>> gen.translate("a red dog left of a blue car", "test_000003", "en", "de", store=store)
        """
        if src == tgt:
            raise M3PInputError(f"source and target language are both {src!r}")
        self._lang_id(src), self._lang_id(tgt)
        tokens = self.encode(text, src)
        limit = self._source_positions()
        if tokens.size(0) > limit:
            raise M3PInputError(f"{tokens.size(0)} tokens, more than the model's {limit} positions")
        feats = spatial = None
        if regions is not None:
            feats, spatial = self._regions(regions, boxes, width, height, store)
        return self._generate(tokens, src, tgt, feats, spatial, beam, **gen_overrides)

    # ---- IGLUE heads (a model fine-tuned with --task m3p_xvnli / m3p_xgqa / m3p_marvl) -------------------
    @torch.no_grad()
    def predict(self, images, text, store=None):
        """The fine-tuned IGLUE head's reading of ``text`` with ``images``, best first: a list of (label,
        probability); softmax over the classes (XVNLI, MaRVL), a sigmoid per answer (xGQA, trained on
        soft scores). ``images``: one image, or the [left, right] pair for MaRVL; an image is an id (with
        ``store``) or a tuple (features R x D, boxes R x 5, or R x 4 in pixels with width, height).

        >>> xvnli.predict("2487069642", "a woman pours drinks on a plane", store=store)[0]
        ('neutral', 0.71)
        """
        from .data.iglue_dataset import SOFT
        from .data.region_dataset import text_image_input
        from .objectives import iglue_logits

        task = self.task
        if getattr(task, "head_name", None) not in getattr(self.model, "classification_heads", {}):
            raise M3PInputError("predict/answer/entail/reason need a model fine-tuned with --task m3p_xvnli, "
                                "m3p_xgqa or m3p_marvl")
        images = [images] if isinstance(images, (str, tuple)) else list(images)
        if len(images) != task.images_per_example:
            raise M3PInputError(f"{task.name} reads {task.images_per_example} image(s) per example, got {len(images)}")
        regions = []
        for image in images:
            feats, spatial = self._regions(*image, store=store) if isinstance(image, tuple) else \
                self._regions(image, store=store)
            regions.append({"features": feats.float(), "boxes": spatial.float(),
                            "classes": torch.zeros(len(feats), dtype=torch.long)})
        tokens = self.encode(text)
        net_input = {k: v.to(self.device) for k, v in  # the text with each image
                     text_image_input([tokens] * len(regions), regions, self.dictionary.pad()).items()}
        logits = iglue_logits(self.model, task.head_name, net_input)[0].float()
        probs = torch.sigmoid(logits) if task.target == SOFT else torch.softmax(logits, -1)
        return sorted(zip(task.labels, probs.tolist()), key=lambda x: -x[1])

    def _job(self, name, method):
        if getattr(self.task, "name", None) != name:
            raise M3PInputError(f"{method} needs a model fine-tuned with --task m3p_{name}; this one has "
                                f"{getattr(self.task, 'name', None) or self.task.cfg._name}")

    def answer(self, image, question, store=None, top_k=1):
        """xGQA: the ``top_k`` answers to ``question`` about ``image``, with their scores.

        >>> gqa.answer("n161313", "Is it overcast?", store=store)
        [('no', 0.94)]
        """
        self._job("xgqa", "answer")
        return self.predict(image, question, store)[:top_k]

    def entail(self, image, hypothesis, store=None):
        """XVNLI: {contradiction, neutral, entailment: probability} of ``hypothesis`` given ``image``."""
        self._job("xvnli", "entail")
        return dict(self.predict(image, hypothesis, store))

    def reason(self, left, right, statement, store=None):
        """MaRVL / NLVR2: the probability that ``statement`` is true of the two images."""
        self._job("marvl", "reason")
        return dict(self.predict([left, right], statement, store))["true"]

HubFromPretrained.hub_loader = staticmethod(from_pretrained)  # M3PModel / M3PSeq2SeqModel.from_pretrained
