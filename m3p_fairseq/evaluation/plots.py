"""m3p-plots: results JSON and training logs as PNG pictures.

    m3p-plots --results demo-output/results.json --train-log demo-output/train.log --out demo-output/plots

Writes one bar chart per task of the results (a bar per language, the chance level as a line
where the JSON has one: the paper's tables as pictures) and, per training log, the loss curve
of each objective against updates. Reads fairseq's ``simple`` and ``json`` log formats.
"""
import argparse
import json
import os
import re

from ..objectives import plot_keys
from ..errors import command, require_file
from ..outputs import Staging
from .results import load_results

_SIMPLE = re.compile(r"(\w+)=([-\d.e+]+|inf|nan)")


def parse_train_log(path):
    """{metric: [(num_updates, value), ...]} from the train_inner lines of a fairseq log."""
    series = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "train_inner" not in line:
                continue
            if "{" in line:
                try:
                    rec = json.loads(line[line.index("{"):])
                except ValueError:
                    continue
            else:
                rec = dict(_SIMPLE.findall(line))
            if "num_updates" not in rec:
                continue
            step = int(float(rec["num_updates"]))
            for k, v in rec.items():
                if v is None or k == "num_updates":
                    continue
                try:
                    series.setdefault(k, []).append((step, float(v)))
                except ValueError:
                    pass
    return series


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(series, out_png, title):
    keys = [k for k in plot_keys() if k in series]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        xs, ys = zip(*series[k])
        ax.plot(xs, ys)
        ax.set_title(k)
        ax.set_xlabel("updates")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def _bars(ax, per_lang, metric, chance=None):
    langs = [l for l in per_lang if isinstance(per_lang[l], dict) and metric in per_lang[l]]
    ax.bar(langs, [per_lang[l][metric] for l in langs])
    if chance is not None:
        ax.axhline(chance, color="red", linestyle="--", label="chance")
        ax.legend(fontsize=7)
    ax.set_ylabel(metric)


def plot_grouped(settings, metric, chance, title, out_png):
    """One group of bars per language, one bar per setting: a table of the paper as one picture."""
    import numpy as np

    from .tables import _langs

    plt = _plt()
    langs = _langs(settings)
    if not langs or len(settings) < 2:
        return None
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(langs)) + 1.8, 3.2))
    x = np.arange(len(langs))
    for k, (name, per) in enumerate(settings.items()):
        ax.bar(x + (k - (len(settings) - 1) / 2) * width,
               [per[l][metric] if isinstance(per.get(l), dict) and metric in per[l] else 0 for l in langs],
               width, label=name)
    if chance is not None:
        ax.axhline(chance, color="red", linestyle="--", label="chance")
    ax.set_xticks(x, langs)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def plot_results(doc, out_dir):
    plt = _plt()
    written = []
    panels = []  # (title, per_lang dict, metric, chance)
    retrieval = doc.get("retrieval", {})
    for setting, per_lang in retrieval.items():
        if isinstance(per_lang, dict) and any(isinstance(v, dict) and "mR" in v for v in per_lang.values()):
            panels.append((f"retrieval {setting}", per_lang, "mR", retrieval.get("chance_mR")))
    for task, metric in (("captioning", "bleu4"), ("captioning", "cider"), ("xnli", "acc"), ("ntg", "bleu4"),
                         ("mmt", "bleu4")):
        per = doc.get(task)
        if isinstance(per, dict) and any(isinstance(v, dict) and metric in v for v in per.values()):
            panels.append((task, per, metric, None))
    from .tables import _settings  # the paper's strategies first

    grouped = {k: v for k, v in _settings(retrieval).items() if any(isinstance(x, dict) and "mR" in x for x in v.values())}
    png = plot_grouped(grouped, "mR", retrieval.get("chance_mR"), "image-text retrieval",
                       os.path.join(out_dir, "retrieval_mR.png"))
    if png:
        written.append(png)
    for title, per_lang, metric, chance in panels:
        fig, ax = plt.subplots(figsize=(4.5, 3))
        _bars(ax, per_lang, metric, chance)
        ax.set_title(title)
        fig.tight_layout()
        path = os.path.join(out_dir, re.sub(r"\W+", "_", f"{title}_{metric}").strip("_") + ".png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


@command("m3p-plots")
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", help="results JSON")
    p.add_argument("--train-log", nargs="*", default=[], help="fairseq training logs (simple or json format)")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    a = p.parse_args(argv)
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # matplotlib's font search logs at DEBUG otherwise
    doc = load_results(require_file(a.results, "results file")) if a.results else None
    for log in a.train_log:
        require_file(log, "training log")
    written = []
    with Staging() as out:  # the pictures join --out together, when all are drawn
        stage = out.folder(a.out, merge=True)
        if doc is not None:
            written += plot_results(doc, stage)
        for log in a.train_log:
            name = os.path.splitext(os.path.basename(log))[0]
            png = plot_losses(parse_train_log(log), os.path.join(stage, f"{name}_losses.png"), name)
            if png:
                written.append(png)
    for w in written:
        print(os.path.join(a.out, os.path.basename(w)))


if __name__ == "__main__":
    main()
