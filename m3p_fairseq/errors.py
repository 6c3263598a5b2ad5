"""Bad input ends in one line naming the file and the id or line, and a non-zero exit.

Every error about the user's data, flags or files is an ``M3PInputError``. The plugin installs a
``sys.excepthook`` so that when one escapes ``fairseq-train`` / ``fairseq-generate`` (which do not
catch it), the user sees ``error: <message>`` instead of a deep traceback; set M3P_TRACEBACK=1
to get the traceback as well. Other exceptions keep Python's default handling.
"""
import os
import sys


class M3PInputError(ValueError):
    """Bad input from the user; the message names the file and the id or line."""


def refused_checkpoint_message(exc):
    """One line for torch's weights_only refusal, or None if ``exc`` is something else."""
    import pickle

    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    what = next((line.strip() for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line),
                "an object outside the allowlist")
    return (f"refused to load a checkpoint: it would run code or build objects outside the allowlist ({what}); "
            f"load only checkpoints you trust")


def _hook(previous):
    def hook(exc_type, exc, tb):
        message = str(exc) if issubclass(exc_type, M3PInputError) else refused_checkpoint_message(exc)
        if message is not None and not os.environ.get("M3P_TRACEBACK"):
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
            os._exit(1)  # skip fairseq's atexit handlers: nothing is left half-written
        previous(exc_type, exc, tb)

    return hook


def install_excepthook():
    if not getattr(sys.excepthook, "_m3p", False):
        hook = _hook(sys.excepthook)
        hook._m3p = True
        sys.excepthook = hook
