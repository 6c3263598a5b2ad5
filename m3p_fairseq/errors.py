"""Bad input ends in one line naming the file and the id or line, and a non-zero exit.

Every error about the user's data, flags or files is an ``M3PInputError``. The plugin installs a
``sys.excepthook`` so that when one escapes ``fairseq-train`` / ``fairseq-generate`` (which do not
catch it), the user sees ``error: <message>`` instead of a deep traceback; set M3P_TRACEBACK=1
to get the traceback as well. The process then ends as Python ends it after any uncaught
exception: buffered output is flushed, atexit handlers run (tensorboard writers, loggers), exit
status 1. Other exceptions keep Python's handling and read as without the plugin (the plugin's
pass-through wrappers of fairseq functions are left out of their tracebacks).
"""
import os
import pickle
import sys


class M3PInputError(ValueError):
    """Bad input from the user; the message names the file and the id or line."""


class M3PDataError(M3PInputError):
    """Bad input data; the message names the file and the line or id."""


class RefusedCheckpointError(M3PInputError, pickle.UnpicklingError):
    """A checkpoint whose unpickling would run code (still the UnpicklingError torch raises)."""


def not_utf8_message(where, raw, error):
    """One line for a line of raw text that is not UTF-8: ``where`` names the file and the line, ``raw`` is
    the line's bytes, ``error`` the UnicodeDecodeError of decoding them."""
    return (f"{where}: not UTF-8 (byte {error.start + 1} of the line is {raw[error.start:error.start + 1]!r}); "
            f"convert the file with iconv -t UTF-8")


def refused_checkpoint_message(exc):
    """One line for torch's weights_only refusal, or None if ``exc`` is something else."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    what = next((line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line),
                "an object outside the allowlist")
    return (f"refused to load a checkpoint: it would run code or build objects outside the allowlist ({what}); "
            f"load only checkpoints you trust")


def _chain(exc):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _plugin_model_names():
    from fairseq.models import MODEL_REGISTRY

    return {cls.__name__ for cls in MODEL_REGISTRY.values() if cls.__module__.startswith(__package__ + ".")}


def _unloadable_checkpoint(exc):
    """The file of fairseq's "Cannot load model parameters from checkpoint X" (which hides its cause
    behind a second traceback), and that cause; (None, None) for other exceptions."""
    import re

    m = re.match(r"Cannot load model parameters from checkpoint (.+?); please ensure", str(exc))
    cause = exc.__cause__ or exc.__context__
    return (m.group(1), cause) if m is not None and cause is not None else (None, None)


def checkpoint_load_message(exc):
    """One line for a checkpoint whose weights do not fit one of the plugin's models: the file and the
    first line of the cause that says what differs. None for other models (a stock model keeps
    fairseq's traceback)."""
    import re

    path, cause = _unloadable_checkpoint(exc)
    into = re.search(r"loading state_dict for (\w+)", str(cause))
    if path is None or into is None or into.group(1) not in _plugin_model_names():
        return None
    lines = [l.strip() for l in str(cause).splitlines() if l.strip()]
    detail = next((l for l in lines if re.match(r"(size mismatch|Missing key|Unexpected key)", l)), lines[0] if lines else "")
    return f"{path}: cannot load its weights into this model (another architecture?): {detail[:300]}"


def one_line(exc):
    """The one-line message for an exception that is the user's input's fault, else None."""
    chain = _chain(exc)
    inner = next((e for e in chain if isinstance(e, M3PInputError)), None)
    if inner is not None:
        if inner is not exc:  # raised under fairseq's checkpoint loading: keep the file it names
            file, _ = _unloadable_checkpoint(exc)
            return f"{file}: {inner}" if file and file not in str(inner) else str(inner)
        return str(inner)
    for e in chain:
        message = refused_checkpoint_message(e)
        if message is not None:
            return message
    return checkpoint_load_message(exc)


def _hook(previous):
    def hook(exc_type, exc, tb):
        if not os.environ.get("M3P_TRACEBACK"):
            message = one_line(exc)
            if message is not None:
                # returning lets the interpreter end as usual: flush stdout, run atexit handlers, exit 1
                sys.stderr.write(f"error: {message}\n")
                return
            from .patching import without_passthrough_frames

            tb = without_passthrough_frames(exc, tb)
        previous(exc_type, exc, tb)

    return hook


def install_excepthook():
    if not getattr(sys.excepthook, "_m3p", False):
        hook = _hook(sys.excepthook)
        hook._m3p = True
        sys.excepthook = hook
