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


def _hook(previous):
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, M3PInputError) and not os.environ.get("M3P_TRACEBACK"):
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            os._exit(1)  # skip fairseq's atexit handlers: nothing is left half-written
        previous(exc_type, exc, tb)

    return hook


def install_excepthook():
    if not getattr(sys.excepthook, "_m3p", False):
        hook = _hook(sys.excepthook)
        hook._m3p = True
        sys.excepthook = hook
