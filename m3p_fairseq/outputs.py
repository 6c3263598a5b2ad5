"""Writing what a command makes: checked at the start, staged, moved into place only when complete.

Every command that writes files goes through here, so a refusal or a crash leaves the output place
as it was (the files there before survive, no half-written file, no folder that only the failed run
created), and a long evaluation cannot lose its numbers to an output path that was never writable:

    check_writable(a.results)                      # at the start: before hours of work
    ...
    with Staging() as out:                         # at the end: all files of the command together
        write_json(out.file(a.results), doc)       # a temporary name beside the target
        for lang in langs:
            build(out.folder(os.path.join(a.out, lang)))   # a folder, replacing the old one
    # here every target is in place; on an exception none is and the temporaries are gone

``write_atomically(path, write)`` is the one-file case. Temporary names start with ``.tmp-`` in the
target's own folder (a rename there is atomic on POSIX file systems), so a reader never sees a
partial file under the real name.
"""
import itertools
import os
import shutil
import tempfile

from .errors import M3PInputError, file_in_the_way

TMP_PREFIX = ".tmp-"
_COUNTER = itertools.count()


def unwritable(path, folder=False):
    """Why ``path`` cannot be written (a file, or with ``folder`` a folder), or None. Folders missing on
    the way are fine (they are created), files standing in their place are not."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and not folder:
        return "a folder, where a file is to be written"
    if os.path.exists(path) and not os.path.isdir(path) and folder:
        return "a file, where a folder is to be written"
    blocker = file_in_the_way(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to write in {parent}"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "no permission to write it"
    return None


def check_writable(*paths, folder=False):
    """Raise one line naming the first of ``paths`` (None entries skipped) that cannot be written."""
    for path in paths:
        why = unwritable(path, folder) if path else None
        if why is not None:
            raise M3PInputError(f"{path}: cannot write here: {why}")


class Staging:
    """Outputs written under temporary names beside their targets, renamed into place together on
    success (in the order asked for: put the file readers open first, e.g. a manifest, last).

    ``file(target)`` gives the temporary path for a file; ``folder(target)`` a temporary folder that
    replaces ``target`` (``merge=True``: its files join ``target``'s, the others there stay);
    ``scratch()`` a temporary folder removed at the end. Folders created on the way to a target are
    removed again if the staging fails and they stayed empty.
    """

    def __init__(self):
        self._moves = []  # (temporary, target, kind)
        self._scratch = []
        self._made = []  # folders this staging created, outermost first

    def _made_parent(self, folder):
        """``folder``, created (with the folders missing on the way, remembered) when it is not there."""
        missing, d = [], os.path.abspath(folder)
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.mkdir(d)
            self._made.append(d)
        return os.path.abspath(folder)

    def _temporary(self, target, folder):
        check_writable(target, folder=folder)
        parent = self._made_parent(os.path.dirname(os.path.abspath(target)))
        # the target's name last: some writers add their extension when it is missing (np.savez)
        name = os.path.basename(os.path.abspath(target))
        return os.path.join(parent, f"{TMP_PREFIX}{os.getpid()}-{next(_COUNTER)}-{name}")

    def file(self, target):
        tmp = self._temporary(target, folder=False)
        self._moves.append((tmp, target, "file"))
        return tmp

    def folder(self, target, merge=False):
        tmp = self._temporary(target, folder=True)
        os.mkdir(tmp)
        self._moves.append((tmp, target, "merge" if merge else "folder"))
        return tmp

    def scratch(self, near):
        """A temporary folder in the folder ``near`` (so that its files can be renamed there)."""
        check_writable(near, folder=True)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self._made_parent(near))
        self._scratch.append(tmp)
        return tmp

    def commit(self):
        for tmp, target, kind in self._moves:
            if kind == "file":
                os.replace(tmp, target)
            elif kind == "merge":
                os.makedirs(target, exist_ok=True)
                for name in sorted(os.listdir(tmp)):
                    os.replace(os.path.join(tmp, name), os.path.join(target, name))
                os.rmdir(tmp)
            elif os.path.isdir(target):
                old = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=os.path.dirname(os.path.abspath(target)))
                os.replace(target, os.path.join(old, "old"))
                os.replace(tmp, target)
                shutil.rmtree(old)
            else:
                os.replace(tmp, target)
        self._moves, self._made = [], []
        self._cleanup()

    def abort(self):
        for tmp, _, kind in self._moves:
            if kind == "file":
                if os.path.lexists(tmp):
                    os.remove(tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        self._moves = []
        self._cleanup()
        for d in reversed(self._made):
            try:
                os.rmdir(d)  # only if empty: something else may have been put there meanwhile
            except OSError:
                break
        self._made = []

    def _cleanup(self):
        for tmp in self._scratch:
            shutil.rmtree(tmp, ignore_errors=True)
        self._scratch = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_atomically(path, write, staging=None):
    """``write(temporary path)``, then the file appears under ``path`` whole (or not at all); into ``staging``
    (a Staging of several outputs, moved into place together) where one is given."""
    if staging is not None:
        write(staging.file(path))
        return
    with Staging() as out:
        write(out.file(path))
