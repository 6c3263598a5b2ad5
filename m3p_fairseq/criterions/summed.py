"""Metric reduction shared by the plugin's criterions: every logging output is a dict of flat sums
(so ``logging_outputs_can_be_summed`` is True), reduced here to means."""
import math

from fairseq import metrics, utils


def summer(logging_outputs):
    """key -> the sum of ``key`` over the logging outputs (0 where absent), as a float."""
    return lambda key: float(sum(utils.item(log.get(key, 0)) for log in logging_outputs))


def log_loss_bits(total):
    """``loss``: the summed loss per ``sample_size``, in bits (fairseq's convention)."""
    n = total("sample_size")
    metrics.log_scalar("loss", total("loss") / max(n, 1) / math.log(2), n, round=3)
    return n


class ClassifierMetrics:
    """The metrics of a classifier's criterion (put before FairseqCriterion among its bases): ``loss`` in bits and
    ``accuracy``, correct examples (``ncorrect``) per example (``nsentences``), as fairseq's sentence_prediction."""

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = summer(logging_outputs)
        log_loss_bits(total)
        n = total("nsentences")
        if n > 0:
            metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / n, n, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
