"""Test helper: SIGKILL the real fairseq-train part-way through a checkpoint write or copy.

A test puts a ``sitecustomize.py`` calling ``install()`` on the PYTHONPATH of the process, so the
plugin and fairseq run unchanged; ``M3P_KILL_IN`` says where the process dies:

* ``write:N``: in the N-th ``torch.save`` into a checkpoint's ``.tmp`` file (fairseq's first write
  of a save), after half of its bytes;
* ``copy:N``: in the N-th copy of a save to ``checkpoint_last.pt`` (``shutil.copyfile``, which
  fairseq's PathManager copies with), after half of its bytes.
"""
import io
import os
import shutil
import signal


def _die_after(data, f):
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install():
    spec = os.environ.get("M3P_KILL_IN")
    if not spec:
        return
    where, nth = spec.split(":")
    calls = {"n": 0}

    def due():
        calls["n"] += 1
        return calls["n"] == int(nth)

    if where == "write":
        import torch

        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            name = getattr(f, "name", f)
            if isinstance(name, str) and name.endswith(".pt.tmp") and due():
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                _die_after(buf.getvalue(), f)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif where == "copy":
        real_copy = shutil.copyfile

        def copyfile(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)).startswith("checkpoint_last.pt") and due():
                with open(src, "rb") as s, open(dst, "wb") as d:
                    _die_after(s.read(), d)
            return real_copy(src, dst, *args, **kwargs)

        shutil.copyfile = copyfile
    else:
        raise ValueError(f"M3P_KILL_IN={spec!r}: expected write:N or copy:N")
