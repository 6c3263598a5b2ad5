"""The results JSON of the demo and the experiments: dotted-key updates, written atomically."""
import json
import os


def load_results(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})")
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object at the top")
    return doc


def _merge(into, new):
    """Nested objects merged key by key; a leaf of ``new`` replaces the one in ``into``."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def update_results(path, key, value):
    """Set ``doc[k1][k2]...`` = value for key "k1.k2..." (objects merged key by key, at every depth: the
    numbers of one language written by another tool stay), then write atomically."""
    doc = load_results(path)
    node = doc
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    _merge(node, {parts[-1]: value})
    _write(path, doc)
    return doc


def _write(path, doc):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def merge_results(path, parts):
    """Merge the results files ``parts`` (missing ones skipped) into ``path``: nested objects are merged
    key by key, a leaf of a later part replaces an earlier one. Written atomically."""
    doc = load_results(path)
    for part in parts:
        _merge(doc, load_results(part))
    _write(path, doc)
    return doc


if __name__ == "__main__":  # python -m m3p_fairseq.evaluation.results TARGET PART... (the demo's lanes)
    import sys
    if len(sys.argv) < 2:
        sys.exit("usage: python -m m3p_fairseq.evaluation.results TARGET [PART ...]")
    try:
        merge_results(sys.argv[1], sys.argv[2:])
    except ValueError as e:
        sys.exit(f"merge results: {e}")
