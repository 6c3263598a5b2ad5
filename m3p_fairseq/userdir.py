"""Make ``--user-dir m3p_fairseq`` work from any working directory.

fairseq resolves ``--user-dir`` as a path: relative to the working directory, else beside the
installed ``fairseq`` package. A regular install puts ``m3p_fairseq`` there already; an editable
install (``pip install -e .``) does not, so ``python -m m3p_fairseq.userdir`` links it there once
(``make install`` does this).
"""
import os
import sys


def link():
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.find_spec("fairseq")
    if spec is None or spec.origin is None:
        sys.exit("m3p_fairseq.userdir: fairseq is not installed")
    site = os.path.dirname(os.path.dirname(spec.origin))
    target = os.path.join(site, "m3p_fairseq")
    if os.path.realpath(target) == here:
        return target
    if os.path.islink(target):
        os.remove(target)
    elif os.path.exists(target):
        return target  # a regular install is there: leave it alone
    os.symlink(here, target)
    return target


if __name__ == "__main__":
    print(f"--user-dir m3p_fairseq resolves to {link()}")
