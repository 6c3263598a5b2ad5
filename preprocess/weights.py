"""What the weight importers share: safe loading, the fairseq dictionary, the target model, the output folder.

``m3p-import-xlmr`` and ``m3p-import-m3p`` both end in the same folder layout::

    OUT_DIR/model.pt                  a checkpoint of the understanding model ("m3p" architecture)
    OUT_DIR/dict.txt                  fairseq dictionary (ids equal the source model's rows)
    OUT_DIR/sentencepiece.bpe.model   the source's sentencepiece model

``model.pt`` is written the way fairseq's released XLM-R checkpoints are (argparse ``args``,
``model``, an optimizer history with no optimizer state), so ``checkpoint_utils``,
``M3PHub.from_pretrained`` and ``fairseq-train --restore-file`` all read it. Everything is
staged in a temporary folder next to OUT_DIR and moved into place only when complete.
"""
import argparse
import logging
import os
import shutil

import torch

from m3p_fairseq import outputs
from m3p_fairseq.errors import M3PInputError, require_file

logger = logging.getLogger(__name__)

# sentencepiece model names the importers look for, in order
SPM_NAMES = ("sentencepiece.bpe.model", "spm.model", "sentencepiece.model")


class WeightImportError(M3PInputError):
    """A source checkpoint that cannot be imported; the message names the file and the key."""


def load_torch(path, trust=False):
    """torch.load a foreign checkpoint without letting it run code (unless ``trust``).

    The plugin's allowlist (``m3p_fairseq.safe_globals``) covers fairseq's argparse/omegaconf
    objects and numpy values; anything else makes weights_only loading refuse, and we say so in
    one line instead of falling back silently.
    """
    import m3p_fairseq  # noqa: F401  (registers the allowlist)

    from m3p_fairseq.checkpoint_guard import unloadable_message

    require_file(path, "checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or pickle errors by case
        raise WeightImportError(f"{path}: " + unloadable_message(
            path, e, trust_hint="if you trust its origin, rerun with --trust-checkpoint"))


def find_spm(folder):
    for name in SPM_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def write_dict_from_spm(spm_path, out_path):
    """fairseq dict.txt for a sentencepiece model: its pieces in id order, control and <unk> left out.

    fairseq's Dictionary puts <s>, <pad>, </s>, <unk> at 0..3 and dict.txt's pieces after them,
    then the task appends <mask>. For XLM-R's model (<unk>=0, <s>=1, </s>=2) that gives piece id
    i -> fairseq id i + 1, which is XLM-R's (and HF's XLMRobertaTokenizer's) numbering; for the
    models preprocess/build_spm.py trains (<s>=0 .. <unk>=3) it gives i -> i, as build_spm writes.
    Returns the number of pieces written.
    """
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=spm_path)
    except (OSError, RuntimeError) as e:
        raise WeightImportError(f"{spm_path}: not a sentencepiece model ({str(e).splitlines()[0] if str(e) else e})")
    n = 0
    with open(out_path, "w", encoding="utf-8") as f:  # into the importer's staging folder
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            f.write(f"{sp.id_to_piece(i)} 1\n")
            n += 1
    return n


def load_dictionary(path):
    """The dictionary the tasks use: dict.txt plus <mask> last."""
    from m3p_fairseq.data.dictionary import load_dictionary

    return load_dictionary(path)


class Dims(argparse.Namespace):
    """Sizes of the understanding model to build (filled from the source)."""

    def __init__(self, layers, embed_dim, ffn_dim, heads, max_positions, activation_fn="gelu", dropout=0.1,
                 attention_dropout=0.1, normalize_before=False, region_feat_dim=2048, num_region_classes=1600,
                 arch="m3p_base", langs=None):
        super().__init__(layers=layers, embed_dim=embed_dim, ffn_dim=ffn_dim, heads=heads,
                         max_positions=max_positions, activation_fn=activation_fn, dropout=dropout,
                         attention_dropout=attention_dropout, normalize_before=normalize_before,
                         region_feat_dim=region_feat_dim, num_region_classes=num_region_classes,
                         arch=arch, langs=langs)


def model_args(data_dir, dims: Dims):
    """The argparse args fairseq-train would have for this model (``dims.arch``, sizes given)."""
    import m3p_fairseq  # noqa: F401  (registers the task, model and criterion)
    from fairseq import options

    argv = [data_dir, "--task", "multitask_multimodal", "--arch", dims.arch, "--criterion", "m3p_pretrain",
            "--encoder-layers", str(dims.layers), "--encoder-embed-dim", str(dims.embed_dim),
            "--encoder-ffn-embed-dim", str(dims.ffn_dim), "--encoder-attention-heads", str(dims.heads),
            "--max-positions", str(dims.max_positions), "--activation-fn", dims.activation_fn,
            "--dropout", str(dims.dropout), "--attention-dropout", str(dims.attention_dropout),
            "--region-feat-dim", str(dims.region_feat_dim), "--num-region-classes", str(dims.num_region_classes)]
    if dims.normalize_before:
        argv.append("--encoder-normalize-before")
    if dims.langs:
        argv += ["--langs", dims.langs]
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, argv)


def build_model(data_dir, dims: Dims):
    """(args, task, model) for the understanding model over data_dir/dict.txt."""
    from fairseq import tasks

    if dims.embed_dim % dims.heads:
        raise WeightImportError(f"hidden size {dims.embed_dim} is not a multiple of {dims.heads} attention heads")
    args = model_args(data_dir, dims)
    task = tasks.setup_task(args)
    return args, task, _seeded_build(task, args)


def _seeded_build(task, args):
    """The model, its new parameters (those no source weight fills) drawn from fairseq's --seed (default 1),
    as fairseq-train draws them: a conversion writes the same file each time; the caller's RNG is restored."""
    from fairseq import utils

    with utils.set_torch_seed(args.seed):
        return task.build_model(args)


def build_generation_model(data_dir, dims: Dims, langs):
    """(args, model) for the generation model (models/m3p_seq2seq.py) with the same text sizes.

    Built under the pre-training task with a generation objective, the combination fairseq-train
    uses for xDAE / IC / DIC, so checkpoint_utils can rebuild it from the saved args.
    """
    import m3p_fairseq  # noqa: F401
    from fairseq import options, tasks

    argv = [data_dir, "--task", "multitask_multimodal", "--objectives", "xdae", "--arch", "m3p_seq2seq_base",
            "--criterion", "m3p_generation", "--langs", langs,
            "--encoder-layers", str(dims.layers), "--encoder-embed-dim", str(dims.embed_dim),
            "--encoder-ffn-embed-dim", str(dims.ffn_dim), "--encoder-attention-heads", str(dims.heads),
            "--max-source-positions", str(dims.max_positions), "--activation-fn", dims.activation_fn,
            "--dropout", str(dims.dropout), "--attention-dropout", str(dims.attention_dropout),
            "--region-feat-dim", str(dims.region_feat_dim)]
    if dims.normalize_before:
        argv.append("--encoder-normalize-before")
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    return args, _seeded_build(tasks.setup_task(args), args)


def load_strict(model, state, source):
    """Load ``state`` into ``model``; every key must match, else one line naming the first offender."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model does not"
        raise WeightImportError(f"{source}: after conversion the checkpoint {what} "
                                f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightImportError(f"{source}: {k!r} has shape {tuple(state[k].shape)}, "
                                    f"the model expects {tuple(v.shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def checkpoint_state(args, model, note):
    """A checkpoint in the layout of fairseq's released models (args, no optimizer state)."""
    return {
        "args": args,
        "cfg": None,
        "model": model.state_dict(),
        # one history entry: fairseq's upgrade code reads [-1]; num_updates 0 starts schedules fresh
        "optimizer_history": [{"criterion_name": "M3PPretrainCriterion", "optimizer_name": "imported",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "m3p_import": note},
        "last_optimizer_state": None,
    }


class Staging:
    """OUT_DIR staged (``m3p_fairseq.outputs``): ``file(name)`` lies in a temporary folder beside it (``path``),
    whose files join OUT_DIR when the block succeeds (OUT_DIR keeps its other files); on error nothing
    under OUT_DIR changes and no folder is left behind."""

    def __init__(self, out_dir):
        self.out_dir = os.path.abspath(out_dir)
        self._outputs = outputs.Staging()
        self.path = self._outputs.folder(self.out_dir, merge=True)

    def file(self, name):
        return os.path.join(self.path, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._outputs.__exit__(exc_type, exc, tb)


def save_model_folder(staging, args, model, note, spm_path):
    """Write model.pt (and copy the sentencepiece model) into the staging folder; dict.txt is there already."""
    args.data = staging.out_dir  # where the folder will live; the hub overrides it anyway
    torch.save(checkpoint_state(args, model, note), staging.file("model.pt"))
    shutil.copyfile(spm_path, staging.file("sentencepiece.bpe.model"))
