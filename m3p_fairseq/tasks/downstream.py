"""What M3P's downstream tasks share: starting from a pre-trained checkpoint, and per-language splits.

Fine-tuning starts from a pre-trained M3P checkpoint either through the task flag
``--pretrained-checkpoint PATH`` (weights only; checked to be the right kind of model, and the
model takes the checkpoint's region sizes and language list), or through fairseq's own
``--restore-file PATH --reset-optimizer --reset-dataloader --reset-meters`` /
``--finetune-from-model PATH`` (which load the weights without these checks).

Evaluation reads one language at a time through split names with a language suffix:
``test.de`` is the German test set (``fairseq-validate --valid-subset test.en,test.de``,
``fairseq-generate --gen-subset test.de``); a plain ``test`` means every evaluation language.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq import checkpoint_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.tasks import FairseqTask

from ..errors import M3PInputError
from ..models.m3p import M3PModel
from ..models.m3p_seq2seq import M3PSeq2SeqModel, split_langs
from . import generation_objectives as gen
from .generation_objectives import GENERATION_ARCHS, UNDERSTANDING_ARCHS

logger = logging.getLogger(__name__)

@dataclass
class PretrainedConfig(FairseqDataclass):
    pretrained_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "pre-trained M3P checkpoint to fine-tune from (weights only, checked to be the model kind the "
                "task needs); a checkpoint in --save-dir still takes precedence, so an interrupted run resumes"})


KINDS = {"understanding": (M3PModel, UNDERSTANDING_ARCHS), "generation": (M3PSeq2SeqModel, GENERATION_ARCHS)}
# what a fine-tuned model takes from its pre-trained checkpoint: the sizes the weights fix, and the options that
# select the function it computes (an imported M3P release: the reference code's, see models/m3p.py)
INHERITED = {"understanding": ("region_feat_dim", "num_region_classes", "joint_layout", "layernorm_eps", "lm_head",
                               "mrm_feat_head", "langs"),
             "generation": ("region_feat_dim", "langs")}


def split_and_langs(split, default_langs):
    """"test.de" -> ("test", ["de"]); "test" -> ("test", default_langs)."""
    if "." in split:
        base, lang = split.split(".", 1)
        return base, [l for l in lang.split("+") if l]
    return split, list(default_langs)


def model_kind(model_cfg):
    """"understanding" / "generation" / None for the model config of a checkpoint."""
    arch = getattr(model_cfg, "arch", None) or getattr(model_cfg, "_name", None)
    cls = ARCH_MODEL_REGISTRY.get(arch)
    for kind, (model_cls, _) in KINDS.items():
        if cls is not None and issubclass(cls, model_cls):
            return kind, arch
    return None, arch


def load_checkpoint_of_kind(path, kind, needs, not_found="checkpoint not found"):
    """(state, model cfg) of a checkpoint holding an M3P model of ``kind``; anything else is one line
    ending in ``needs`` (what the caller does with it)."""
    if not os.path.isfile(path):
        raise M3PInputError(f"{path}: {not_found}")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except M3PInputError:  # a refused checkpoint: its one line names the file already
        raise
    except Exception as e:  # truncated or foreign files raise many kinds of errors
        raise M3PInputError(f"{path}: cannot load checkpoint ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    model_cfg = (state.get("cfg") or {}).get("model") if state.get("cfg") is not None else state.get("args")
    found, arch = model_kind(model_cfg) if model_cfg is not None else (None, None)
    if found != kind:
        what = f"an M3P {found} model" if found else "not an M3P model"
        raise M3PInputError(f"{path}: a checkpoint of arch {arch} ({what}); {needs}")
    return state, model_cfg


def read_pretrained(path, kind, task_name):
    """Load a pre-trained checkpoint and check that it holds a model of the ``kind`` the task fine-tunes."""
    return load_checkpoint_of_kind(path, kind, f"{task_name} fine-tunes an M3P {kind} model ({KINDS[kind][1]})",
                                   "pre-trained checkpoint not found (--pretrained-checkpoint)")


def inherit_model_args(cfg, model_cfg, kind, path):
    """Sizes that must match the checkpoint come from it unless given; given ones must agree."""
    for name in INHERITED[kind]:
        theirs = getattr(model_cfg, name, None)
        ours = getattr(cfg, name, None)
        if theirs is None:
            continue
        if ours is None or (name == "langs" and not split_langs(ours)):
            setattr(cfg, name, theirs)
        elif ours != theirs:
            arch = getattr(model_cfg, "arch", None) or getattr(model_cfg, "_name", None)
            raise M3PInputError(f"--{name.replace('_', '-')} {ours} differs from the pre-trained checkpoint {path} "
                                f"({theirs}; it is an --arch {arch} model)")


def load_pretrained_weights(model, state, path):
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).splitlines()[0])
        raise M3PInputError(f"{path}: its weights do not fit the model built from --arch and its flags ({first[:300]})")
    logger.info(f"initialised from {path}")


def check_kind(model, kind, cfg, task_name):
    """The model built for a task must be of the kind it fine-tunes (an --arch of the other kind fails here)."""
    model_cls, archs = KINDS[kind]
    if not isinstance(model, model_cls):
        arch = getattr(cfg, "arch", None) or getattr(cfg, "_name", None) or model.__class__.__name__
        raise M3PInputError(f"--arch {arch}: {task_name} needs an M3P {kind} model ({archs})")


def build_downstream_model(task, cfg, from_checkpoint, kind, task_name, prepare=None):
    """Build the task's model; ``prepare(model)`` adds the task's heads. When fine-tuning starts (not
    when a fine-tuned checkpoint is loaded for evaluation), the weights come from --pretrained-checkpoint."""
    path = getattr(task.cfg, "pretrained_checkpoint", None)
    state = None
    if path and not from_checkpoint:
        state, model_cfg = read_pretrained(path, kind, task_name)
        inherit_model_args(cfg, model_cfg, kind, path)
    if kind == "generation":
        gen.default_model_langs(task, cfg)
    model = FairseqTask.build_model(task, cfg, from_checkpoint)
    check_kind(model, kind, cfg, task_name)
    if kind == "generation":
        task.model_langs = model.langs
    if prepare is not None:
        prepare(model)
    if state is not None:
        load_pretrained_weights(model, state, path)
    return model
