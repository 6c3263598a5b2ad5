"""The results JSON of the demo and the experiments: dotted-key updates, written atomically."""
import json
import os

from ..errors import M3PInputError, command
from ..outputs import check_writable, write_atomically


def load_results(path):
    """The results document at ``path`` ({} when there is none yet); one line when it is not one."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except ValueError as e:
            raise M3PInputError(f"{path}: not valid JSON ({e})")
    if not isinstance(doc, dict):
        raise M3PInputError(f"{path}: expected a JSON object at the top")
    return doc


def check_results_file(path, key=None):
    """At a command's start: ``path`` (if given) can be written and, if it exists, is a results document
    that can take ``key``, so that the numbers of a long evaluation are not lost at its end."""
    if path:
        check_writable(path)
        _node(path, load_results(path), key.split(".")[:-1] if key else [])


def _node(path, doc, parts):
    """The object at ``parts`` of ``doc``, made where missing; one line where a value stands in the way."""
    node = doc
    for k, part in enumerate(parts):
        if not isinstance(node.get(part, {}), dict):
            raise M3PInputError(f"{path}: {'.'.join(parts[:k + 1])} holds {node[part]!r}, not an object: cannot "
                                f"store {'.'.join(parts)}.* under it")
        node = node.setdefault(part, {})
    return node


def _merge(into, new):
    """Nested objects merged key by key; a leaf of ``new`` replaces the one in ``into``."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def set_result(path, doc, key, value):
    """``doc[k1][k2]...`` = value for key "k1.k2..." (objects merged key by key, at every depth: the numbers of
    one language written by another tool stay); ``path``: the file ``doc`` comes from, for messages."""
    parts = key.split(".")
    _merge(_node(path, doc, parts[:-1]), {parts[-1]: value})
    return doc


def update_results(path, key, value):
    """``set_result`` in the results file ``path``, written atomically."""
    doc = set_result(path, load_results(path), key, value)
    write_results(path, doc)
    return doc


def write_results(path, doc, staging=None):
    """``doc`` as the results file ``path``, written atomically (or into ``staging``, an outputs.Staging)."""
    def dump(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)

    write_atomically(path, dump, staging)


def merge_results(path, parts):
    """Merge the results files ``parts`` (missing ones skipped) into ``path``: nested objects are merged
    key by key, a leaf of a later part replaces an earlier one. Written atomically."""
    doc = load_results(path)
    for part in parts:
        _merge(doc, load_results(part))
    write_results(path, doc)
    return doc


@command("merge results")
def main(argv=None):
    """python -m m3p_fairseq.evaluation.results TARGET PART... (the demo's lanes)"""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 1:
        raise SystemExit("usage: python -m m3p_fairseq.evaluation.results TARGET [PART ...]")
    check_writable(argv[0])
    merge_results(argv[0], argv[1:])


if __name__ == "__main__":
    main()
