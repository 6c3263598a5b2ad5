"""m3p-results-table: a results JSON as markdown tables laid out like the paper's (a column per language).

    m3p-results-table demo-output/results.json            # every table the JSON has
    m3p-results-table results.json --table retrieval      # one of: retrieval, captioning, mmt, xnli, ntg
"""
import argparse
import sys

from .results import load_results

LANG_ORDER = ["en", "de", "fr", "cs", "ja", "zh", "es", "it", "ru", "ar"]


def _langs(rows):
    seen = {lang for row in rows.values() if isinstance(row, dict) for lang in row if isinstance(row[lang], dict)}
    return [l for l in LANG_ORDER if l in seen] + sorted(seen - set(LANG_ORDER))


def _table(title, rows, metric, fmt="{:.1f}"):
    """rows: {setting: {lang: {metric: value}}} -> markdown with one column per language."""
    langs = _langs(rows)
    if not langs:
        return ""
    out = [f"**{title}** ({metric})", "", "| setting | " + " | ".join(langs) + " |",
           "|---|" + "---|" * len(langs)]
    for setting, per_lang in rows.items():
        if not isinstance(per_lang, dict):
            continue
        cells = []
        for lang in langs:
            v = per_lang.get(lang, {})
            cells.append(fmt.format(v[metric]) if isinstance(v, dict) and metric in v else "-")
        out.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def retrieval_table(doc):
    r = doc.get("retrieval", {})
    settings = {k: v for k, v in r.items() if isinstance(v, dict)}
    text = _table("Image-text retrieval", settings, "mR")
    if "chance_mR" in r:
        text += f"\nChance level: mR {r['chance_mR']:.1f}.\n"
    return text


def captioning_table(doc):
    c = doc.get("captioning", {})
    return _table("Image captioning", {"BLEU-4": c}, "bleu4") + "\n" + _table("Image captioning", {"CIDEr": c}, "cider")


def mmt_table(doc):
    m = doc.get("mmt", {})
    if not m:
        return ""
    pairs = list(m)
    out = ["**Multimodal MT** (BLEU-4)", "", "| " + " | ".join(pairs) + " |", "|" + "---|" * len(pairs),
           "| " + " | ".join(f"{m[p]['bleu4']:.1f}" for p in pairs) + " |"]
    return "\n".join(out) + "\n"


def xnli_table(doc):
    return _table("XNLI", {"accuracy": doc.get("xnli", {})}, "acc")


def ntg_table(doc):
    return _table("News title generation", {"BLEU-4": doc.get("ntg", {})}, "bleu4")


TABLES = {"retrieval": retrieval_table, "captioning": captioning_table, "mmt": mmt_table, "xnli": xnli_table,
          "ntg": ntg_table}


def render(doc, which=None):
    parts = [TABLES[t](doc) for t in ([which] if which else TABLES) if t in doc]
    return "\n".join(p for p in parts if p.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results")
    p.add_argument("--table", choices=sorted(TABLES))
    a = p.parse_args(argv)
    try:
        doc = load_results(a.results)
    except ValueError as e:
        sys.exit(f"m3p-results-table: {e}")
    if not doc:
        sys.exit(f"m3p-results-table: {a.results}: no results")
    print(render(doc, a.table))


if __name__ == "__main__":
    main()
