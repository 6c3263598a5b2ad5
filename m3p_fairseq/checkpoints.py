"""Model kinds, and loading a checkpoint of a required kind: the one place that decides whether a model
or a checkpoint holds M3P's understanding model or its generation model.

Kinds come from fairseq's registries: an architecture is of a kind when ``ARCH_MODEL_REGISTRY`` maps it
to a subclass of the kind's model class, so an architecture registered with
``@register_model_architecture("m3p", ...)`` is known everywhere without a list to keep up to date.
Every task, command and the hub go through here: ``require_kind`` for a model they built,
``load_checkpoint_of_kind`` / ``load_model_of_kind`` for a file they read, and fine-tuning takes
the settings a pre-trained checkpoint fixes with ``inherit_model_args``.
"""
import logging
import os

from .errors import M3PInputError
from .utils import split_list

logger = logging.getLogger(__name__)

UNDERSTANDING, GENERATION = "understanding", "generation"

# what a model built from a pre-trained checkpoint takes from it: the sizes its weights fix, and the
# options that select the function it computes (an imported M3P release: the reference code's, models/m3p.py)
INHERITED = {UNDERSTANDING: ("region_feat_dim", "num_region_classes", "joint_layout", "layernorm_eps", "lm_head",
                             "mrm_feat_head", "langs"),
             GENERATION: ("region_feat_dim", "langs")}


def model_classes():
    from .models.m3p import M3PModel
    from .models.m3p_seq2seq import M3PSeq2SeqModel

    return {UNDERSTANDING: M3PModel, GENERATION: M3PSeq2SeqModel}


def archs_of(kind):
    """The registered architectures of a kind, as a comma-separated string for messages."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    cls = model_classes()[kind]
    return ", ".join(sorted(a for a, c in ARCH_MODEL_REGISTRY.items() if issubclass(c, cls)))


def kind_of_model(model):
    """UNDERSTANDING / GENERATION / None for a built model."""
    return next((k for k, cls in model_classes().items() if isinstance(model, cls)), None)


def arch_of(cfg):
    return getattr(cfg, "arch", None) or getattr(cfg, "_name", None)


def kind_of_cfg(model_cfg):
    """(kind or None, arch) of a model config (argparse Namespace or omegaconf), by fairseq's registry."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    arch = arch_of(model_cfg)
    cls = ARCH_MODEL_REGISTRY.get(arch)
    return next((k for k, c in model_classes().items() if cls is not None and issubclass(cls, c)), None), arch


def describe(kind):
    return f"an M3P {kind} model ({archs_of(kind)})"


def require_kind(model, kind, cfg, who):
    """The model ``who`` built must be of ``kind``; an --arch of the other kind stops in one line."""
    found = kind_of_model(model)
    if found != kind:
        arch = arch_of(cfg) or model.__class__.__name__
        what = f"an M3P {found} model" if found else "not an M3P model"
        raise M3PInputError(f"--arch {arch} ({what}): {who} needs {describe(kind)}")


def model_langs(model):
    """The languages of a model's language embedding, in id order ([] without one)."""
    return split_list(getattr(getattr(model, "args", None), "langs", None))


def load_checkpoint_of_kind(path, kind, needs, not_found="checkpoint not found", overrides=None):
    """(state, model cfg) of a checkpoint holding an M3P model of ``kind``; anything else is one line
    ending in ``needs`` (what the caller does with it). ``overrides``: fairseq's arg_overrides (e.g. data)."""
    from fairseq import checkpoint_utils

    if not os.path.exists(path):
        raise M3PInputError(f"{path}: {not_found}")
    # the plugin's wrapper of this fairseq function says in one line what is wrong with a file it cannot load
    state = checkpoint_utils.load_checkpoint_to_cpu(path, overrides)
    model_cfg = (state.get("cfg") or {}).get("model") if state.get("cfg") is not None else state.get("args")
    found, arch = kind_of_cfg(model_cfg) if model_cfg is not None else (None, None)
    if found != kind:
        what = f"an M3P {found} model" if found else "not an M3P model"
        raise M3PInputError(f"{path}: a checkpoint of arch {arch} ({what}); {needs}")
    return state, model_cfg


def load_model_of_kind(path, data, kind, who, overrides=None):
    """(model, task) of a checkpoint that must hold ``kind``, built as fairseq builds it, over ``data``."""
    overrides = {"data": data, **(overrides or {})}
    # (fairseq applies arg_overrides while it reads the file: with a state given, they must be in it already)
    state, _ = load_checkpoint_of_kind(path, kind, f"{who} needs {describe(kind)}", overrides=overrides)
    model, _, task = load_model(path, overrides, state)
    return model, task


def load_model(path, overrides, state=None):
    """(model, cfg, task) as fairseq's load_model_ensemble_and_task builds them; weights that do not fit the
    model built (another architecture, a dict.txt of another size) are one line naming the file."""
    from fairseq import checkpoint_utils

    from .errors import checkpoint_load_message

    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, state=state)
    except RuntimeError as e:
        message = checkpoint_load_message(e)
        if message is None:
            raise
        raise M3PInputError(f"{path}: {message}") from e
    return models[0], cfg, task


def inherit_model_args(cfg, model_cfg, kind, path):
    """What the checkpoint fixes comes from it unless given; given values must agree."""
    for name in INHERITED[kind]:
        theirs = getattr(model_cfg, name, None)
        ours = getattr(cfg, name, None)
        if theirs is None:
            continue
        if ours is None or (name == "langs" and not split_list(ours)):
            setattr(cfg, name, theirs)
        elif ours != theirs:
            raise M3PInputError(f"--{name.replace('_', '-')} {ours} differs from the pre-trained checkpoint {path} "
                                f"({theirs}; it is an --arch {arch_of(model_cfg)} model)")


def load_pretrained_weights(model, state, path):
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).splitlines()[0])
        raise M3PInputError(f"{path}: its weights do not fit the model built from --arch and its flags ({first[:300]})")
    logger.info(f"initialised from {path}")
