"""m3p-plots: results JSON and training logs as PNG pictures.

    m3p-plots --results demo-output/results.json --train-log demo-output/train.log --out demo-output/plots

Writes one bar chart per task of the results (a bar per language, the chance level as a line
where the JSON has one: the paper's tables as pictures) and, per training log, the training loss
curve of each objective against updates (``NAME_losses.png``) and the validation curves of each
validation subset (``NAME_valid.png``: the loss, the task's dev metric with a line per language or
target and their mean, e.g. zero-shot mR per language during pre-training, each objective's loss
and the accuracies). Reads fairseq's ``simple`` and ``json`` log formats.
"""
import argparse
import json
import os
import re

from ..objectives import plot_keys
from ..errors import command, require_file
from ..outputs import Staging
from .results import load_results
from .validation import METRIC_FAMILIES

_SIMPLE = re.compile(r"(\w+)=([-\d.e+]+|inf|nan)")
_LEVELS = ("INFO", "WARNING", "ERROR", "DEBUG")
_VALID = re.compile(r"valid on '(.*)' subset")
TRAIN = "train_inner"


def _numbers(rec, prefix=""):
    out = {}
    for k, v in rec.items():
        if v is None or not k.startswith(prefix):
            continue
        try:
            out[k[len(prefix):]] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def _record(tag, message):
    """(series name, {metric: value}) of one log message: the training curve (``train_inner``), or a validation
    subset's stats (``valid`` lines, one per subset and validation); None for other lines."""
    if message.startswith("{"):
        try:
            rec = json.loads(message)
        except ValueError:
            return None
        if tag == TRAIN:
            return TRAIN, _numbers(rec)
        if f"{tag}_num_updates" in rec and tag != "train":  # validation: keys prefixed with the subset
            return tag, _numbers(rec, f"{tag}_")
        return None
    if tag == TRAIN:
        return TRAIN, _numbers(dict(_SIMPLE.findall(message)))
    m = _VALID.search(message)
    if m:  # epoch 001 | valid on 'valid' subset | loss 7.9 | ... | num_updates 3
        return m.group(1), _numbers(dict(p.split(" ", 1) for p in message.split(" | ") if " " in p))
    return None


def _tag_and_message(line):
    """(tag, message) of a fairseq log line, ``time | level | tag | message`` (the message may hold " | ")."""
    parts = line.rstrip("\n").split(" | ")
    i = next((k for k, p in enumerate(parts[:3]) if p in _LEVELS), 0)
    return (parts[i + 1], " | ".join(parts[i + 2:])) if len(parts) > i + 2 else ("", "")


def parse_log(path):
    """{series: {metric: [(num_updates, value), ...]}} of a fairseq log, ``simple`` or ``json`` format: the
    training curve under ``train_inner``, each validation subset under its name (``valid``)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            rec = _record(*_tag_and_message(line))
            if not rec or "num_updates" not in rec[1]:
                continue
            name, values = rec
            step = int(values.pop("num_updates"))
            for k, v in values.items():
                out.setdefault(name, {}).setdefault(k, []).append((step, v))
    return out


def parse_train_log(path):
    """{metric: [(num_updates, value), ...]} from the train_inner lines of a fairseq log."""
    return parse_log(path).get(TRAIN, {})


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(series, out_png, title):
    """The training loss curve of each objective against updates, in one row."""
    panels = [(k, [k]) for k in plot_keys() if k in series]
    return _curves(series, panels, out_png, title, cols=len(panels), marker=None)


def _curves(series, panels, out_png, title, cols, marker="o"):
    """Curves against updates, one panel per (title, [metric, ...]) of ``panels`` (a line per metric, the one
    named as the panel drawn thicker: the mean of the others); None when there is nothing to draw."""
    if not panels:
        return None
    plt = _plt()
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            xs, ys = zip(*series[k])
            several = len(keys) > 1
            ax.plot(xs, ys, marker=marker, markersize=3, label=(k[len(name) + 1:] or "mean") if several else None,
                    linewidth=2.5 if several and k == name else 1.2)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("updates")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def validation_panels(series):
    """The panels of a validation curve: [(title, [metric, ...])]: the loss, each dev-metric family (one line per
    language or target and their mean: mR, bleu), each objective's curve, and the accuracies."""
    panels = [("loss", ["loss"])] if "loss" in series else []
    for family in METRIC_FAMILIES:
        keys = sorted(k for k in series if k == family or k.startswith(family + "_"))
        if keys:
            panels.append((family, keys))
    shown = {k for _, keys in panels for k in keys}
    panels += [(k, [k]) for k in plot_keys() if k in series and k not in shown]
    shown |= {k for _, keys in panels for k in keys}
    panels += [(k, [k]) for k in sorted(series) if (k.endswith("_acc") or k in ("acc", "accuracy")) and k not in shown]
    return panels


def plot_validation(series, out_png, title):
    """A run's validation curves against updates, one panel per validation_panels entry."""
    panels = validation_panels(series)
    return _curves(series, panels, out_png, title, cols=min(4, len(panels)) or 1)


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
            series = parse_log(log)
            png = plot_losses(series.get(TRAIN, {}), os.path.join(stage, f"{name}_losses.png"), name)
            if png:
                written.append(png)
            for subset in sorted(k for k in series if k != TRAIN):  # validation curves, one picture per subset
                png = plot_validation(series[subset], os.path.join(stage, f"{name}_{subset}.png"),
                                      f"{name}: validation on {subset}")
                if png:
                    written.append(png)
    for w in written:
        print(os.path.join(a.out, os.path.basename(w)))


if __name__ == "__main__":
    main()
