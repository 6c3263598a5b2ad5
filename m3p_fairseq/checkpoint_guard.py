"""Checkpoints that survive a kill at any moment, and that cannot run code when loaded.

fairseq 0.12 writes the first file of a save atomically (``.tmp``, then a rename) but gives the
save its other names (``checkpoint_last.pt``, ``checkpoint_best.pt``) with a plain copy: a run
killed during that copy leaves a truncated ``checkpoint_last.pt``, and the same command then fails
to resume. ``install()`` (run when the plugin is imported) replaces three module-level names of
``fairseq.checkpoint_utils``, each by a wrapper around fairseq's own function:

* ``PathManager``: the same class, except that ``copy`` writes ``NAME.tmp`` and renames it, as
  fairseq's first write does; a kill leaves the old ``NAME`` whole.
* ``load_checkpoint`` (what ``fairseq-train`` resumes with): when it would resume from
  ``checkpoint_last.pt``, it resumes from the newest complete checkpoint of the save folder
  instead, with one warning naming what it skipped: a truncated file (from a copy without this
  plugin, or a machine that crashed before the data reached the disk), an unfinished ``.tmp``
  write, or a ``checkpoint_last.pt`` older than a complete save the run was killed in the middle of.
* ``load_checkpoint_to_cpu`` (every load: ``--restore-file``, ``--finetune-from-model``,
  ``fairseq-generate --path``, the hub, the plugin's evaluation commands): a checkpoint whose
  unpickling would run code, which torch's ``weights_only`` loading refuses, ends in one line
  naming the file (``RefusedCheckpointError``, still a ``pickle.UnpicklingError``).

When nothing is wrong, each wrapper does exactly what fairseq does: the copies hold the same
bytes, ``checkpoint_last.pt`` is the newest complete file, and loads return fairseq's result.
Sharded checkpoints (a ``--checkpoint-suffix``, FSDP shards) and remote paths keep fairseq's
handling.
"""
import logging
import os
import pickle
import re
import zipfile

from .errors import M3PInputError, RefusedCheckpointError, refused_checkpoint_message

logger = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
# every name fairseq's save_checkpoint gives a save (without a --checkpoint-suffix)
CHECKPOINT_NAME = re.compile(r"checkpoint(_last|_best|\d+|_\d+_\d+|\.best_.+)\.pt")
ZIP_MAGIC = b"PK\x03\x04"


def incomplete(path):
    """Why ``path`` is not a whole checkpoint ("truncated", "empty"), or None if it looks whole.

    torch.save writes a zip archive whose central directory comes last, so a file cut anywhere
    lacks it; the check reads the directory only, not the tensors. A file of torch's legacy
    (pre-zip) format is left for torch to judge.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head != ZIP_MAGIC:
        return "truncated" if size < len(ZIP_MAGIC) else None
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "truncated"
    return None if any(n.endswith("data.pkl") for n in names) else "truncated (no data.pkl)"


def newest_complete(save_dir):
    """(newest whole checkpoint or None, [(skipped path, why)]) among the checkpoints of ``save_dir``.

    Newest by modification time, ``checkpoint_last.pt`` first among equals: fairseq writes the
    first name of a save, then copies it to the others with ``checkpoint_last.pt`` last, so when no
    save was interrupted ``checkpoint_last.pt`` is the answer. Unfinished ``.tmp`` writes newer
    than the answer are reported as skipped.
    """
    found, tmps = [], []
    for name in os.listdir(save_dir):
        path = os.path.join(save_dir, name)
        if CHECKPOINT_NAME.fullmatch(name):
            found.append(path)
        elif name.endswith(".tmp") and CHECKPOINT_NAME.fullmatch(name[: -len(".tmp")]):
            tmps.append(path)
    mtime = os.path.getmtime
    found.sort(key=lambda p: (mtime(p), os.path.basename(p) == LAST), reverse=True)
    skipped, chosen = [], None
    for path in found:
        why = incomplete(path)
        if why is None:
            chosen = path
            break
        skipped.append((path, why))
    after = mtime(chosen) if chosen is not None else float("-inf")
    skipped += [(p, "an unfinished write") for p in sorted(tmps) if mtime(p) >= after]
    return chosen, skipped


def _resume_target(cfg, trainer):
    """The checkpoint to resume from when it is not fairseq's choice (checkpoint_last.pt), else None."""
    save_dir = cfg.save_dir
    if cfg.restore_file != LAST or trainer.checkpoint_suffix or cfg.no_last_checkpoints:
        return None
    from fairseq.file_io import PathManager

    if PathManager.path_requires_pathmanager(save_dir) or not os.path.isdir(save_dir):
        return None
    last = os.path.join(save_dir, LAST)
    names = os.listdir(save_dir)
    interrupted = any(n.endswith(".tmp") and CHECKPOINT_NAME.fullmatch(n[:-4]) for n in names)
    if not os.path.exists(last) and not interrupted:
        return None  # a first launch: fairseq starts afresh (or from --finetune-from-model)
    chosen, skipped = newest_complete(save_dir)
    if chosen is None and not os.path.exists(last):
        # killed while writing the first save: nothing to resume, fairseq starts afresh
        logger.warning("no complete checkpoint yet; skipped " + ", ".join(f"{p} ({why})" for p, why in skipped))
        return None
    if chosen is None:
        raise M3PInputError(f"{save_dir}: no complete checkpoint to resume from ("
                            + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
                            + "); move the folder away to start afresh")
    if skipped and trainer.data_parallel_rank == 0:
        logger.warning(f"resuming from {chosen}, the newest complete checkpoint; skipped "
                       + ", ".join(f"{p} ({why})" for p, why in skipped))
    return chosen if os.path.abspath(chosen) != os.path.abspath(last) else None


def _resuming_from_newest(original):
    """fairseq's load_checkpoint, pointed at the newest complete checkpoint when checkpoint_last.pt
    is missing, truncated or older than a save that was interrupted."""

    def load_checkpoint(cfg, trainer, **passthrough_args):
        chosen = _resume_target(cfg, trainer)
        if chosen is None:
            return original(cfg, trainer, **passthrough_args)
        from omegaconf import open_dict

        saved = cfg.restore_file, cfg.finetune_from_model
        with open_dict(cfg):
            # not a first launch: fairseq itself would resume and ignore --finetune-from-model
            cfg.restore_file, cfg.finetune_from_model = chosen, None
        try:
            return original(cfg, trainer, **passthrough_args)
        finally:
            with open_dict(cfg):
                cfg.restore_file, cfg.finetune_from_model = saved

    return load_checkpoint


def _refusing_code(original):
    """fairseq's load_checkpoint_to_cpu; torch's weights_only refusal becomes one line naming the file."""

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except pickle.UnpicklingError as e:
            message = refused_checkpoint_message(e)
            if message is None or isinstance(e, RefusedCheckpointError):
                raise
            raise RefusedCheckpointError(f"{path}: {message}") from e

    return load_checkpoint_to_cpu


def _atomic_copies(path_manager):
    """fairseq's PathManager whose copy goes through NAME.tmp and a rename, as fairseq's first write."""

    class CheckpointPathManager(path_manager):
        @staticmethod
        def copy(src_path, dst_path, overwrite=False):
            if not path_manager.supports_rename(dst_path):
                return path_manager.copy(src_path, dst_path, overwrite)
            tmp = dst_path + ".tmp"
            done = path_manager.copy(src_path, tmp, overwrite=True)
            if done:
                path_manager.rename(tmp, dst_path)
            return done

    return CheckpointPathManager


def install():
    from fairseq import checkpoint_utils

    from .patching import patch

    patch(checkpoint_utils, "PathManager", _atomic_copies)
    patch(checkpoint_utils, "load_checkpoint", _resuming_from_newest)
    patch(checkpoint_utils, "load_checkpoint_to_cpu", _refusing_code)
