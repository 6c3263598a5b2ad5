"""m3p-results-table: a results JSON as markdown tables laid out like the paper's (a column per language).

    m3p-results-table demo-output/results.json            # every table the JSON has
    m3p-results-table results.json --table retrieval      # one of the TABLES below

Per-language sections hold ``{setting: {lang: {metric: value}}}`` (retrieval, mild) or
``{lang: {metric: value}}`` (captioning, xnli, ntg; mmt by direction; iglue, iglue_translate_test by task,
iglue_few_shot by task and shots); a metric found where a
language should be stops with one line naming its key.
"""
import argparse
import re

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
                where = f"{section}.{setting}" if setting not in ("", "accuracy", "BLEU-4", "CIDEr") else section
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
    if _has(rows, RIGHT_LANGUAGE):
        parts.append(_table("Captions written in the requested language, %", rows, RIGHT_LANGUAGE, section="captioning"))
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
    if any(RIGHT_LANGUAGE in m[p] for p in pairs):
        out += ["", "Outputs in the target language, %:", "", "| " + " | ".join(pairs) + " |", "|" + "---|" * len(pairs),
                "| " + " | ".join(f"{m[p][RIGHT_LANGUAGE]:.0f}" if RIGHT_LANGUAGE in m[p] else "-" for p in pairs)
                + " |"]
    return "\n".join(out) + "\n"


def xnli_table(doc):
    return _table("XNLI", {"accuracy": doc.get("xnli", {})}, "acc", section="xnli")


RIGHT_LANGUAGE = "right_language"  # percent of outputs written in the requested language (evaluation/language_id.py)


def _has(rows, metric):
    return any(isinstance(m, dict) and metric in m for per_lang in rows.values() if isinstance(per_lang, dict)
               for m in per_lang.values())


def ntg_table(doc):
    rows = {"BLEU-4": doc.get("ntg", {})}
    text = _table("News title generation", rows, "bleu4", section="ntg")
    if _has(rows, RIGHT_LANGUAGE):
        text += "\n" + _table("News titles written in the requested language, %", {"share": doc["ntg"]},
                               RIGHT_LANGUAGE, section="ntg")
    return text


def transfer_table(doc):
    """The transfer ratios (evaluation/transfer.py) beside the paper's."""
    t = doc.get("transfer", {})
    rows = [(name, r) for name, r in t.items() if isinstance(r, dict) and "ratio" in r]
    if not rows:
        return ""
    out = ["**Cross-lingual transfer after English fine-tuning** (ratio: 1 = as good as English, 0 = chance)", "",
           "| table | ratio | lowest language | the paper's |", "|---|---|---|---|"]
    for name, r in rows:
        low = min(r["per_lang"], key=r["per_lang"].get) if r.get("per_lang") else "-"
        out.append(f"| {name} | {r['ratio']:.2f} | {low} {r['min']:.2f} | {r['paper']:.2f} |")
    return "\n".join(out) + "\n"


IGLUE_TITLES = {"xvnli": "XVNLI", "xgqa": "xGQA", "marvl": "MaRVL", "xflickrco": "xFlickr&CO", "wit": "WIT"}
IGLUE_METRICS = {"acc": "accuracy", "ir_r1": "IR R@1", "tr_r1": "TR R@1"}
IGLUE_LEVELS = ("chance", "chance_r1", "majority", "majority_answer", "majority_from")  # beside the languages


def _iglue_jobs(section):
    """The task sections of an IGLUE results section, in IGLUE's order."""
    jobs = {k: v for k, v in section.items() if isinstance(v, dict)}
    return {k: jobs[k] for k in sorted(jobs, key=lambda k: (list(IGLUE_TITLES).index(k) if k in IGLUE_TITLES
                                                            else len(IGLUE_TITLES), k))}


def _iglue_rows(title, rows, where, label=""):
    """rows: {row name: {lang: metrics}} of one IGLUE job -> markdown, a column per language (English
    first), IGLUE's average over the others last, a row per (row name, metric)."""
    rows = {name: {l: m for l, m in r.items() if l not in IGLUE_LEVELS} for name, r in rows.items()}
    _check_languages(where, rows)
    langs = sorted({l for r in rows.values() for l, m in r.items() if isinstance(m, dict) and l != "avg"},
                   key=lambda l: (l != "en", l))
    metrics = [k for k in IGLUE_METRICS if any(isinstance(m, dict) and k in m for r in rows.values() for m in r.values())]
    if not langs or not metrics:
        return ""
    out = [f"**{title}**", "", "| | " + " | ".join(langs) + " | avg |",
           "|---|" + "---|" * (len(langs) + 1)]
    for name, r in rows.items():
        for k in metrics:
            cells = [f"{r[l][k]:.1f}" if isinstance(r.get(l), dict) and k in r[l] else "-" for l in langs + ["avg"]]
            out.append(f"| {name}{label}{' ' if name else ''}{IGLUE_METRICS[k]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _iglue_level(section):
    if "majority" in section:
        return f"\nMajority answer ({section.get('majority_answer', '?')}): {section['majority']:.1f}.\n"
    if "chance" in section:
        return f"\nChance level: {section['chance']:.1f}.\n"
    if "chance_r1" in section:
        return f"\nChance level: R@1 {section['chance_r1']:.2f}.\n"
    return ""


def iglue_table(doc):
    """IGLUE per task: zero-shot (English: the fine-tuned model on English), translate-test, few-shot by shots;
    averages over the non-English languages, as IGLUE reports them."""
    parts = []
    for section, what in (("iglue", ""), ("iglue_translate_test", ", translate-test")):
        for job, per_lang in _iglue_jobs(doc.get(section, {})).items():
            title = IGLUE_TITLES.get(job, job) + what
            parts.append(_iglue_rows(title, {"": per_lang}, f"{section}.{job}") + _iglue_level(per_lang))
    for job, by_shots in _iglue_jobs(doc.get("iglue_few_shot", {})).items():
        rows = dict(sorted(_settings(by_shots).items(), key=lambda kv: _shots(kv[0])))
        parts.append(_iglue_rows(IGLUE_TITLES.get(job, job) + ", few-shot", rows, f"iglue_few_shot.{job}", " shots"))
    return "\n".join(p for p in parts if p)


def _shots(name):
    digits = re.match(r"\d+", name)
    return (int(digits.group()) if digits else 0, name)


TABLES = {"retrieval": retrieval_table, "mild": mild_table, "captioning": captioning_table, "mmt": mmt_table,
          "xnli": xnli_table, "ntg": ntg_table, "iglue": iglue_table, "transfer": transfer_table}


# the results sections a table reads, where not just its name
SECTIONS = {"captioning": CAPTIONING, "iglue": ("iglue", "iglue_translate_test", "iglue_few_shot")}


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
