"""How the plugin changes fairseq: a module-level name replaced by a wrapper around fairseq's own.

fairseq looks these names up at call time (``checkpoint_utils.load_checkpoint(...)``,
``distributed_utils.call_main(...)``), so replacing the module attribute is enough and no fairseq
method body is copied. A wrapper that only passes a call on is left out of the traceback of an
error that is not the plugin's (``without_passthrough_frames``), so a stock fairseq error reads the
same with ``--user-dir m3p_fairseq`` as without it.
"""
import types

_PASSTHROUGH = set()  # code objects of the wrappers


def _codes(wrapper):
    """The code of a wrapper function, or of the methods of a wrapper class."""
    funcs = [wrapper] if isinstance(wrapper, types.FunctionType) else \
        [getattr(v, "__func__", v) for v in vars(wrapper).values()]
    return [f.__code__ for f in funcs if isinstance(f, types.FunctionType)]


def patch(module, name, make, *args):
    """``module.name = make(module.name, *args)``, once (the plugin may be imported twice)."""
    current = getattr(module, name)
    if getattr(current, "_m3p_patched", False):
        return
    patched = make(current, *args)
    patched._m3p_patched = True
    patched._m3p_original = current
    _PASSTHROUGH.update(_codes(patched))
    setattr(module, name, patched)


def _filtered(tb):
    kept = []
    while tb is not None:
        if tb.tb_next is None or tb.tb_frame.f_code not in _PASSTHROUGH:
            kept.append(tb)  # the frame that raised stays, even in a wrapper
        tb = tb.tb_next
    for a, b in zip(kept, kept[1:]):
        a.tb_next = b
    return kept[0] if kept else None


def without_passthrough_frames(exc, tb):
    """``tb`` (and the tracebacks of the exceptions ``exc`` was raised from) without wrapper frames."""
    seen = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if e.__traceback__ is not None and e.__traceback__ is not tb:
            e.__traceback__ = _filtered(e.__traceback__)
        e = e.__cause__ or e.__context__
    return _filtered(tb)
