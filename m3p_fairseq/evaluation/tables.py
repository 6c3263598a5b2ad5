"""m3p-results-table: a results JSON as markdown tables laid out like the paper's (a column per language).

    m3p-results-table demo-output/results.json            # every table the JSON has
    m3p-results-table results.json --table retrieval      # one of the TABLES below

Per-language sections hold ``{setting: {lang: {metric: value}}}`` (retrieval, mild) or
``{lang: {metric: value}}`` (captioning, xnli, ntg; mmt by direction); a metric found where a
language should be stops with one line naming its key.
"""
import argparse

from ..errors import M3PInputError, command, require_file
from .results import load_results

LANG_ORDER = ["en", "de", "fr", "cs", "ja", "zh", "es", "it", "ru", "ar"]


def _langs(rows):
    seen = {lang for row in rows.values() if isinstance(row, dict) for lang in row if isinstance(row[lang], dict)}
    return [l for l in LANG_ORDER if l in seen] + sorted(seen - set(LANG_ORDER))


def _check_languages(section, rows):
    """Each setting maps languages to metric dicts: a number there is a metric without its language."""
    for setting, per_lang in rows.items():
        if not isinstance(per_lang, dict):
            continue
        for lang, value in per_lang.items():
            if lang.startswith("chance"):  # a task-wide chance level, e.g. captioning.chance_object_precision
                continue
            if not isinstance(value, dict):
                where = f"{section}.{setting}" if setting not in ("accuracy", "BLEU-4", "CIDEr") else section
                raise M3PInputError(f"{where}.{lang}: expected a language holding metrics (e.g. {where}.en.{lang}), "
                                    f"found the value {value!r}")


def _table(title, rows, metric, fmt="{:.1f}", section=None):
    """rows: {setting: {lang: {metric: value}}} -> markdown with one column per language."""
    _check_languages(section or title, rows)
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
            if isinstance(v, dict) and metric in v and not isinstance(v[metric], (int, float)):
                raise M3PInputError(f"{section or title}.{setting}.{lang}.{metric}: expected a number, "
                                    f"found {v[metric]!r}")
            cells.append(fmt.format(v[metric]) if isinstance(v, dict) and metric in v else "-")
        out.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


SETTING_ORDER = ["zero_shot_no_parallel", "zero_shot", "zero_shot_code_switched", "finetune_en", "code_switching",
                 "finetune_each", "finetune_all", "two_stage"]


def _settings(section):
    """The dict-valued settings of a section, the paper's strategies first."""
    settings = {k: v for k, v in section.items() if isinstance(v, dict)}
    return {k: settings[k] for k in sorted(settings, key=lambda k: (SETTING_ORDER.index(k) if k in SETTING_ORDER
                                                                     else len(SETTING_ORDER), k))}


def retrieval_table(doc):
    r = doc.get("retrieval", {})
    settings = _settings(r)
    text = _table("Image-text retrieval", settings, "mR", section="retrieval")
    if "chance_mR" in r:
        text += f"\nChance level: mR {r['chance_mR']:.1f}.\n"
    two = settings.get("two_stage")
    if two:
        out = ["**Two-stage retrieval** (dual-encoder shortlist, cross-encoder re-ranking)", "",
               "| language | mR two-stage | mR full | mR dual only | pairs cross-encoded | pairs full |",
               "|---|---|---|---|---|---|"]
        full = settings.get("finetune_en", {})
        for lang in _langs({"two_stage": two}):
            m = two[lang]
            full_mr = m.get("full_mR", full.get(lang, {}).get("mR") if isinstance(full.get(lang), dict) else None)
            cell = (lambda v: "-" if v is None else f"{v:.1f}")
            out.append(f"| {lang} | {cell(m.get('mR'))} | {cell(full_mr)} | {cell(m.get('dual_mR'))} | "
                       f"{m.get('pairs', '-')} | {m.get('full_pairs', '-')} |")
        text += "\n" + "\n".join(out) + "\n"
    return text


def mild_table(doc):
    return _table("MILD retrieval, <Q,I> vs <Q,I,C>", _settings(doc.get("mild", {})), "mR", section="mild")


CAPTIONING = ("captioning", "captioning_pretrained")  # fine-tuned; the pre-trained model's own captions


def captioning_table(doc):
    """A row per section present: ``captioning`` (fine-tuned, captioning.sh) and ``captioning_pretrained``
    (the pre-trained model's IC, the demo's step 6); the objects its captions name where measured."""
    rows = {k: doc[k] for k in CAPTIONING if isinstance(doc.get(k), dict)}
    parts = [_table("Image captioning", rows, metric, section="captioning") for metric in ("bleu4", "cider")]
    named = {k: v for k, v in rows.items() if any(isinstance(m, dict) and "object_precision" in m for m in v.values())}
    if named:
        parts.append(_table("Objects named in the captions, right / named", named, "object_precision",
                            section="captioning"))
        chance = [v["chance_object_precision"] for v in named.values() if "chance_object_precision" in v]
        if chance:
            parts[-1] += f"\nChance level: {chance[0]:.1f}% (objects named at random).\n"
    return "\n".join(p for p in parts if p)


def mmt_table(doc):
    m = doc.get("mmt", {})
    if not m:
        return ""
    for pair, v in m.items():
        if not isinstance(v, dict):
            raise M3PInputError(f"mmt.{pair}: expected a direction holding metrics (e.g. mmt.en-de.bleu4), "
                                f"found the value {v!r}")
    pairs = list(m)
    out = ["**Multimodal MT** (BLEU-4)", "", "| " + " | ".join(pairs) + " |", "|" + "---|" * len(pairs),
           "| " + " | ".join(f"{m[p]['bleu4']:.1f}" if "bleu4" in m[p] else "-" for p in pairs) + " |"]
    return "\n".join(out) + "\n"


def xnli_table(doc):
    return _table("XNLI", {"accuracy": doc.get("xnli", {})}, "acc", section="xnli")


def ntg_table(doc):
    return _table("News title generation", {"BLEU-4": doc.get("ntg", {})}, "bleu4", section="ntg")


TABLES = {"retrieval": retrieval_table, "mild": mild_table, "captioning": captioning_table, "mmt": mmt_table,
          "xnli": xnli_table, "ntg": ntg_table}


SECTIONS = {"captioning": CAPTIONING}  # the results sections a table reads, where not just its name


def render(doc, which=None):
    tables = [which] if which else list(TABLES)
    for name in [n for t in tables for n in SECTIONS.get(t, (t,))]:
        if name in doc and not isinstance(doc[name], dict):
            raise M3PInputError(f"{name}: expected an object of settings or languages, found {doc[name]!r}")
    parts = [TABLES[t](doc) for t in tables if any(n in doc for n in SECTIONS.get(t, (t,)))]
    return "\n".join(p for p in parts if p.strip())


@command("m3p-results-table")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results")
    p.add_argument("--table", choices=sorted(TABLES))
    a = p.parse_args(argv)
    require_file(a.results, "results file")
    doc = load_results(a.results)
    if not doc:
        raise M3PInputError(f"{a.results}: no results")
    try:
        text = render(doc, a.table)
    except M3PInputError as e:
        raise M3PInputError(f"{a.results}: {e}")
    print(text)


if __name__ == "__main__":
    main()
