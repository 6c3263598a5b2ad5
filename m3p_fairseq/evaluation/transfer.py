"""Cross-lingual transfer ratios: how much of what fine-tuning on English taught carries to the other languages.

One number per English-to-all table (retrieval fine-tuned on English, XNLI, NTG), computed from a results
JSON and written back under ``transfer``, beside the paper's ratio for the same table:

* retrieval and XNLI: the mean over the non-English languages of (metric - chance) / (English - chance), so
  0 is "nothing carried over" and 1 "as good as English" (mR with its chance level; accuracy, chance 1/3);
* NTG: the mean over the non-English languages of BLEU-4 / English BLEU-4 (BLEU has no chance level), with the
  smallest ratio beside it (each language must carry over, not only their mean).

    python -m m3p_fairseq.evaluation.transfer demo-output/results.json   # adds "transfer" to it
"""
import sys

from ..errors import command
from .results import load_results, update_results

# The paper's own ratios, from its tables: XNLI (fine-tuned on English: en 82.3, the 14 other languages 71.4 on
# average, chance 33.3); NTG (en 14.1; es 8.0, fr 7.3, de 5.2, ru 6.1); retrieval fine-tuned on English (Table 1's
# "fine-tune on en" row: Multi30K en 87.4, de 58.5, fr 46.0, cs 36.8; MSCOCO en 88.6, ja 53.8, zh 56.0; mR over
# 1,000/5,000-image test sets, chance about 0.3, taken as 0).
PAPER = {
    "xnli": round((71.4 - 100 / 3) / (82.3 - 100 / 3), 2),
    "ntg": round((8.0 / 14.1 + 7.3 / 14.1 + 5.2 / 14.1 + 6.1 / 14.1) / 4, 2),
    "retrieval": round((58.5 / 87.4 + 46.0 / 87.4 + 36.8 / 87.4 + 53.8 / 88.6 + 56.0 / 88.6) / 5, 2),
}
XNLI_CHANCE = 100 / 3


def _above_chance_ratio(per_lang, metric, chance_of):
    """{lang: (value - chance) / (English - chance)} for every non-English language, or None without English."""
    en = per_lang.get("en")
    if not isinstance(en, dict) or metric not in en:
        return None
    out = {}
    for lang, m in per_lang.items():
        if lang == "en" or not isinstance(m, dict) or metric not in m:
            continue
        span = en[metric] - chance_of(lang)
        out[lang] = (m[metric] - chance_of(lang)) / span if span > 0 else 0.0
    return out


def _summary(ratios, paper, **extra):
    if not ratios:
        return None
    return {"ratio": round(sum(ratios.values()) / len(ratios), 3), "min": round(min(ratios.values()), 3),
            "per_lang": {l: round(r, 3) for l, r in sorted(ratios.items())}, "paper": paper, **extra}


def transfer_ratios(doc, retrieval_setting="finetune_en"):
    """{"retrieval": ..., "xnli": ..., "ntg": ...}: each {ratio, min, per_lang, paper} where the results have it."""
    out = {}
    ret = doc.get("retrieval", {}).get(retrieval_setting)
    if isinstance(ret, dict):
        default_chance = doc["retrieval"].get("chance_mR", 0.0)

        def chance(lang):
            m = ret.get(lang, {})
            return m.get("chance_mR", default_chance) if isinstance(m, dict) else default_chance

        out["retrieval"] = _summary(_above_chance_ratio(ret, "mR", chance) or {}, PAPER["retrieval"],
                                    setting=retrieval_setting)
    if isinstance(doc.get("xnli"), dict):
        out["xnli"] = _summary(_above_chance_ratio(doc["xnli"], "acc", lambda lang: XNLI_CHANCE) or {}, PAPER["xnli"])
    ntg = doc.get("ntg")
    if isinstance(ntg, dict) and isinstance(ntg.get("en"), dict) and ntg["en"].get("bleu4", 0) > 0:
        en = ntg["en"]["bleu4"]
        out["ntg"] = _summary({l: m["bleu4"] / en for l, m in ntg.items()
                               if l != "en" and isinstance(m, dict) and "bleu4" in m}, PAPER["ntg"])
    return {k: v for k, v in out.items() if v is not None}


@command("transfer")
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m m3p_fairseq.evaluation.transfer RESULTS_JSON")
    ratios = transfer_ratios(load_results(argv[0]))
    update_results(argv[0], "transfer", ratios)
    for name, r in ratios.items():
        print(f"{name}: transfer ratio {r['ratio']:.2f} (lowest {r['min']:.2f}; the paper's {r['paper']:.2f})",
              file=sys.stderr)


if __name__ == "__main__":
    main()
