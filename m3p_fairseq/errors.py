"""Bad input ends in one line naming the file and the id or line, and a non-zero exit: the one boundary.

What counts as the user's input's fault, and its one line (``one_line``):

* an ``M3PInputError`` (``M3PDataError``, ``RefusedCheckpointError``, ...): its message;
* a file-system error (``OSError`` with a file name: missing file, permission, a parent that is a
  file, a folder given for a file ...): ``PATH: what the system said`` (and which ancestor is a
  file, where that is the cause);
* a ``UnicodeDecodeError`` while a text file was read: the file and the line, found by looking
  for the open file in the traceback and decoding it line by line (so every reader, fairseq's
  own included, is covered without wrapping it); gzip data that ends early or is damaged, the same
  way;
* a checkpoint that fairseq could not load into one of the plugin's models (another architecture,
  another dictionary size).

Everything else is a bug and keeps its traceback. Set ``M3P_TRACEBACK=1`` to see the traceback of
an input error as well.

Console scripts: decorate ``main`` with ``@command("m3p-NAME")`` (the name setup.py gives it)::

    from m3p_fairseq.errors import M3PInputError, command

    @command("m3p-import-foo")
    def main(argv=None):
        a = parser.parse_args(argv)
        check_writable(a.out)            # m3p_fairseq.outputs: fail before the long part
        ...raise M3PInputError(f"{path}: line {n}: expected ..., found ...")

and the command ends with ``m3p-import-foo: <line>`` on stderr and exit status 1 (``SystemExit``
when ``main(argv)`` is called in-process, as the tests do); nothing else to catch. Write outputs
through ``m3p_fairseq.outputs`` (staged, moved into place only when complete) so a refusal leaves
nothing behind.

Inside ``fairseq-train`` / ``fairseq-generate`` (which the plugin cannot wrap), the plugin installs
a ``sys.excepthook`` that prints ``error: <line>`` for the same errors, where they are an
``M3PInputError``, were raised by the plugin's own code, or the run is one of the plugin's tasks
(fairseq's own ``--save-dir`` under a file, say); a stock task's error keeps its traceback and reads
as without the plugin (the pass-through wrappers of fairseq functions are left out of it).
The process then ends as Python ends it after any uncaught exception: buffered output is flushed,
atexit handlers run (tensorboard writers, loggers), exit status 1.
"""
import functools
import gzip
import io
import os
import pickle
import sys


class M3PInputError(ValueError):
    """Bad input from the user; the message names the file and the id or line."""


class M3PDataError(M3PInputError):
    """Bad input data; the message names the file and the line or id."""


class RefusedCheckpointError(M3PInputError, pickle.UnpicklingError):
    """A checkpoint whose unpickling would run code (still the UnpicklingError torch raises)."""


class CheckpointError(M3PInputError):
    """A file given as a checkpoint that is none (missing, truncated, of another format)."""


def not_utf8_message(where, raw, error):
    """One line for a line of raw text that is not UTF-8: ``where`` names the file and the line, ``raw`` is
    the line's bytes, ``error`` the UnicodeDecodeError of decoding them."""
    return (f"{where}: not UTF-8 (byte {error.start + 1} of the line is {raw[error.start:error.start + 1]!r}); "
            f"convert the file with iconv -t UTF-8")


def refused_checkpoint_message(exc):
    """One line for torch's weights_only refusal of an object that would run code (a GLOBAL outside the
    allowlist), or None if ``exc`` is something else (a file that is no pickle at all is refused too,
    with "Unsupported operand": that is not a checkpoint, see checkpoint_guard.not_a_checkpoint)."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    what = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported global" in line
                 or "Unsupported class" in line), None)
    if what is None:
        return None
    return (f"refused to load a checkpoint: it would run code or build objects outside the allowlist ({what}); "
            f"load only checkpoints you trust")


def _chain(exc):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_plugin_class(cls):
    """Whether ``cls`` (a task, model, criterion class) is defined by this plugin, not by fairseq or another one."""
    return getattr(cls, "__module__", "").startswith(__package__ + ".")


def _plugin_model_names():
    from fairseq.models import MODEL_REGISTRY

    return {cls.__name__ for cls in MODEL_REGISTRY.values() if is_plugin_class(cls)}


def _unloadable_checkpoint(exc):
    """The file of fairseq's "Cannot load model parameters from checkpoint X" (which hides its cause
    behind a second traceback), and that cause; (None, None) for other exceptions."""
    import re

    m = re.match(r"Cannot load model parameters from checkpoint (.+?); please ensure", str(exc))
    cause = exc.__cause__ or exc.__context__
    return (m.group(1), cause) if m is not None and cause is not None else (None, None)


def checkpoint_load_message(exc):
    """One line for a checkpoint whose weights do not fit one of the plugin's models: the file (when
    fairseq named it) and the first line of the cause that says what differs; a token embedding of
    another size is said to be another dictionary. None for other models (a stock model keeps
    fairseq's traceback)."""
    import re

    path, cause = _unloadable_checkpoint(exc)
    if path is None and isinstance(exc, RuntimeError):
        cause = exc  # load_model_ensemble_and_task (the hub, the evaluation commands) lets it through bare
    into = re.search(r"loading state_dict for (\w+)", str(cause))
    if into is None or into.group(1) not in _plugin_model_names():
        return None
    lines = [l.strip() for l in str(cause).splitlines() if l.strip()]
    detail = next((l for l in lines if re.match(r"(size mismatch|Missing key|Unexpected key)", l)), lines[0] if lines else "")
    vocab = re.match(r"size mismatch for [\w.]*embed_tokens\.weight: copying a param with shape torch\.Size\(\[(\d+), "
                     r"\d+\]\) from checkpoint, the shape in current model is torch\.Size\(\[(\d+), \d+\]\)", detail)
    where = f"{path}: " if path else ""
    if vocab:
        return (f"{where}the checkpoint's vocabulary has {vocab.group(1)} entries, the dictionary given has "
                f"{vocab.group(2)} (dict.txt of the data folder, <mask> included): use the dict.txt the model "
                f"was trained with")
    return f"{where}cannot load its weights into this model (another architecture?): {detail[:300]}"


# ---- file-system and decoding errors -----------------------------------------------------------------

def require_file(path, what="file"):
    """``path``, when it is a file; else one line saying that the ``what`` is missing or is a folder."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        raise M3PInputError(f"{path}: a folder, where the {what} is expected")
    raise M3PInputError(f"{path}: {what} not found")


def file_in_the_way(path):
    """The nearest ancestor of ``path`` that exists and is not a folder, or None."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    return parent if parent and not os.path.isdir(parent) else None


def os_error_message(exc):
    """One line for an OSError: the file it names and what went wrong."""
    if exc.filename is None:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    path = os.fsdecode(exc.filename)
    what = exc.strerror or type(exc).__name__
    missing_way = isinstance(exc, (NotADirectoryError, FileExistsError, FileNotFoundError))
    blocker = file_in_the_way(path) if missing_way else None
    if blocker is not None:
        what = f"{blocker} is a file, not a folder"
    elif isinstance(exc, IsADirectoryError):
        what = "a folder, where a file is expected"
    target = f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 is not None else ""
    return f"{path}{target}: {what}"


def first_line_not_utf8(path, gz=False):
    """(line number, raw bytes, UnicodeDecodeError) of the first line of ``path`` (``gz``: its gunzipped text)
    that is not UTF-8, or None (also when the file cannot be read again)."""
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return n, raw, e
    except (OSError, EOFError, ValueError):
        return None
    return None


def _files_read(tb, wanted):
    """(path, file object) of the open files (objects for which ``wanted(f)``) in the frames of ``tb``, innermost
    frame first: what was being read when the error was raised."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    seen = {}
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            try:  # any object may sit in a frame: none may break the error's report
                name = getattr(value, "name", None) if wanted(value) else None
                if isinstance(name, (str, bytes)) and os.path.isfile(name):
                    seen.setdefault(os.fsdecode(name), value)
            except Exception:
                continue
    return list(seen.items())


def _gzip_file(f):
    return isinstance(f, gzip.GzipFile) or isinstance(getattr(f, "buffer", None), gzip.GzipFile)


def compressed_data_message(exc):
    """One line for gzip data that ends early or is damaged (EOFError, zlib.error, BadGzipFile), naming the file
    being read; None when no gzip file was being read (an EOFError can be a bug)."""
    import zlib

    for e in _chain(exc):
        if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)):
            files = _files_read(e.__traceback__, _gzip_file)
            if files:
                return (f"{files[0][0]}: damaged or truncated gzip data ({str(e) or type(e).__name__}; a partial "
                        f"download?)")
    return None


def decode_error_message(exc):
    """One line for a UnicodeDecodeError met while reading a text file: the file and the line."""
    for e in _chain(exc):
        if not isinstance(e, UnicodeDecodeError):
            continue
        for path, f in _files_read(e.__traceback__, lambda f: isinstance(f, io.TextIOBase)):
            bad = first_line_not_utf8(path, gz=_gzip_file(f))
            if bad is not None:
                n, raw, error = bad
                return not_utf8_message(f"{path}: line {n}", raw, error)
        return f"input that is not {e.encoding} ({e.reason}); convert the file with iconv -t UTF-8"
    return None


def _raised_by_plugin(exc):
    """Whether a frame of the plugin's own code (not a pass-through wrapper) is in a traceback of ``exc``'s chain."""
    from .patching import _PASSTHROUGH

    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_globals.get("__name__", "").startswith(__package__ + ".") and frame.f_code not in _PASSTHROUGH:
                return True
            tb = tb.tb_next
    return False


def _plugin_task_run():
    """Whether this process runs one of the plugin's tasks (``--task NAME`` / ``task._name=NAME`` on its command
    line): then fairseq's own file-system errors (a --save-dir under a file ...) are the run's input errors too."""
    try:
        from fairseq.tasks import TASK_REGISTRY
    except ImportError:
        return False
    argv = sys.argv[1:]
    names = [b for a, b in zip(argv, argv[1:]) if a == "--task"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith(("--task=", "task._name="))]
    return any(is_plugin_class(TASK_REGISTRY.get(n)) for n in names)


def one_line(exc, ours=None):
    """The one-line message for an exception that is the user's input's fault, else None. ``ours``: the
    code that raised it is the plugin's (a console script); None: find out from the traceback (fairseq's
    processes, where a stock task's error must keep its traceback)."""
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
    message = checkpoint_load_message(exc)
    if message is not None:
        return message
    if not (ours or (ours is None and (_raised_by_plugin(exc) or _plugin_task_run()))):
        return None
    message = compressed_data_message(exc)
    if message is not None:
        return message
    system = next((e for e in chain if isinstance(e, (OSError, UnicodeDecodeError))), None)
    if system is None:
        return None
    return decode_error_message(system) if isinstance(system, UnicodeDecodeError) else os_error_message(system)


def command(name):
    """The error boundary of a console script: ``@command("m3p-binarize")`` on ``def main(argv=None)``.
    An input, file-system or decoding error ends the command with ``NAME: <one line>`` on stderr and exit
    status 1 (``SystemExit``); other exceptions keep their traceback, as does every error under
    ``M3P_TRACEBACK=1``. ``main.__wrapped__`` is the undecorated function (one command calling another)."""
    def boundary(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except Exception as e:
                message = None if os.environ.get("M3P_TRACEBACK") else one_line(e, ours=True)
                if message is None:
                    raise
                raise SystemExit(f"{name}: {message}") from None

        return run

    return boundary


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
