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
  For the plugin's tasks, an explicit ``--restore-file`` (or a first launch's
  ``--finetune-from-model``) that names no file is an error, where fairseq would train from scratch.
* ``load_checkpoint_to_cpu`` (every load: ``--restore-file``, ``--finetune-from-model``,
  ``fairseq-generate --path``, the hub, the plugin's evaluation commands): a local file it cannot
  load ends in one line naming it and saying why, each cause its own: not found, a folder, not a
  checkpoint (what it is instead, from its first bytes: a gzip or tar download such as
  ``xlmr.base.tar.gz``, a text file, a Git LFS pointer, safetensors ...), truncated, a torch file
  that is no fairseq checkpoint, or one whose unpickling would run code, which torch's
  ``weights_only`` loading refuses (``RefusedCheckpointError``, still a ``pickle.UnpicklingError``).
  The importers' own loading (preprocess/weights.py) says the same through ``unloadable_message``.

When nothing is wrong, each wrapper does exactly what fairseq does: the copies hold the same
bytes, ``checkpoint_last.pt`` is the newest complete file, and loads return fairseq's result.
Sharded checkpoints (a ``--checkpoint-suffix``, FSDP shards) and remote paths keep fairseq's
handling.
"""
import logging
import os
import re
import zipfile

from .errors import CheckpointError, M3PInputError, RefusedCheckpointError, is_plugin_class, refused_checkpoint_message

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
        missing = _missing_start(cfg, trainer)
        if missing is not None:
            raise M3PInputError(missing)
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


def not_a_checkpoint(path):
    """What ``path`` is when its first bytes show that it is no torch checkpoint ("a gzip file ...", with
    what to do), "truncated ..." for a torch zip cut short, or None when it may be one (torch judges)."""
    import tarfile

    if os.path.isdir(path):
        return "a folder, not a checkpoint file (give the .pt file inside it)"
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file, not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"\x1f\x8b"):
        try:
            with tarfile.open(path, "r|gz") as t:
                first = next(iter(t), None)
        except (tarfile.TarError, OSError, EOFError):
            first = None
        if first is not None:
            return (f"a gzip-compressed tar archive (first member {first.name}; a download such as fairseq's "
                    f"xlmr.base.tar.gz), not a checkpoint: unpack it (tar -xzf {os.path.basename(path)}) and give "
                    f"the .pt file inside; XLM-R's folder is imported with m3p-import-xlmr")
        return "a gzip-compressed file, not a checkpoint: decompress it (gunzip) and give the file inside"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return (f"a tar archive, not a checkpoint: unpack it (tar -xf {os.path.basename(path)}) and give the .pt file "
                f"inside")
    for magic, what in ((b"BZh", "a bzip2-compressed file"), (b"\xfd7zXZ\x00", "an xz-compressed file"),
                        (b"\x28\xb5\x2f\xfd", "a zstd-compressed file")):
        if head.startswith(magic):
            return f"{what}, not a checkpoint: decompress it and give the file inside"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a region shard?), not a checkpoint"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array file (.npy), not a checkpoint"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the checkpoint it stands for: fetch the file (git lfs pull)"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return ("a safetensors file (HuggingFace weights), not a fairseq checkpoint: convert its folder with "
                "m3p-import-xlmr")
    if head.startswith(ZIP_MAGIC):
        why = incomplete(path)
        if why == "truncated":
            return ("truncated (the file ends before its end record: an interrupted copy or download?); use a "
                    "complete copy")
        if why is not None:
            return "a zip archive, not a torch checkpoint (no data.pkl; an .npz or another archive?)"
        return None
    if not head.startswith(b"\x80"):  # every torch checkpoint (zip or legacy pickle) starts otherwise
        try:
            head.decode("utf-8")
            return "a text file, not a checkpoint"
        except UnicodeDecodeError:
            return "not a checkpoint (neither torch's zip format nor its legacy pickle format)"
    return None


def unloadable_message(path, exc, fairseq_step=False, trust_hint=None):
    """One line (without the path) for a failed load of ``path``: not found, not a checkpoint (what it is),
    truncated, code-running (``trust_hint``: what to do then, e.g. an importer's --trust-checkpoint), or
    with ``fairseq_step`` (torch read it, fairseq's upgrade of it failed) not a fairseq checkpoint."""
    if isinstance(exc, FileNotFoundError) or not os.path.exists(path):
        return "checkpoint not found"
    what = not_a_checkpoint(path)
    if what is not None:
        return what
    refused = refused_checkpoint_message(exc)
    if refused is not None:
        return refused + (f"; {trust_hint}" if trust_hint else "")
    text = str(exc).strip()
    if isinstance(exc, EOFError) or "unexpected EOF" in text or "failed finding central directory" in text:
        return "truncated (the file ends early: an interrupted copy or download?); use a complete copy"
    if "Weights only load failed" in text:  # no GLOBAL refused: the bytes are no pickle torch wrote
        detail = next((l.strip() for l in text.splitlines() if l.strip().startswith("Unsupported")), "")
        return f"not a torch checkpoint (its pickle stream is none torch writes{': ' + detail if detail else ''})"
    if fairseq_step:
        return ("a torch file but not a fairseq checkpoint (it lacks fairseq's keys: model, args or cfg, "
                "optimizer_history); weights of another toolkit are converted with m3p-import-xlmr / m3p-import-m3p")
    first = text.splitlines()[0][:200] if text else ""
    return f"cannot load checkpoint ({exc.__class__.__name__}: {first})"


def _raised_in_torch_load(exc):
    import torch

    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is torch.serialization.load.__code__:
            return True
        tb = tb.tb_next
    return False


def _has_fairseq_keys(path):
    """Whether the torch file ``path`` holds a fairseq checkpoint's keys (then a failure after torch read it
    is not the file's fault, and keeps fairseq's traceback)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # unreadable after all: the file's fault
        return False
    return isinstance(state, dict) and "model" in state and ("args" in state or "cfg" in state) \
        and ("optimizer_history" in state or "best_loss" in state)  # what fairseq's upgrade needs


def _explaining_failures(original):
    """fairseq's load_checkpoint_to_cpu; a local file it cannot load raises one line naming the file and
    saying why (``CheckpointError``; ``RefusedCheckpointError``, still a pickle.UnpicklingError, for one
    that would run code)."""

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except M3PInputError:
            raise
        except Exception as e:
            from fairseq.file_io import PathManager

            if PathManager.path_requires_pathmanager(path):
                raise  # a remote path: fairseq's own handling
            torch_read_it = not isinstance(e, OSError) and not _raised_in_torch_load(e)
            if torch_read_it and _has_fairseq_keys(path):
                raise
            message = unloadable_message(path, e, fairseq_step=torch_read_it)
            error = RefusedCheckpointError if message.startswith("refused") else CheckpointError
            raise error(f"{path}: {message}") from e

    return load_checkpoint_to_cpu


def _missing_start(cfg, trainer):
    """One line when an explicit --restore-file (or --finetune-from-model on a first launch) names no file,
    for the plugin's tasks (fairseq itself would train from scratch and end with status 0)."""
    if not is_plugin_class(type(trainer.task)):
        return None
    from fairseq.file_io import PathManager

    if cfg.restore_file != LAST:
        path = cfg.restore_file.replace(".pt", trainer.checkpoint_suffix + ".pt")
        flag = "--restore-file"
    elif cfg.finetune_from_model and not PathManager.exists(
            os.path.join(cfg.save_dir, f"checkpoint_last{trainer.checkpoint_suffix}.pt")):
        path, flag = cfg.finetune_from_model, "--finetune-from-model"
    else:
        return None
    if PathManager.path_requires_pathmanager(path) or PathManager.isfile(path):
        return None
    what = not_a_checkpoint(path) if os.path.isdir(path) else "not found"
    return f"{path}: {flag} {what} (without it training would start from scratch)"


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
    patch(checkpoint_utils, "load_checkpoint_to_cpu", _explaining_failures)
