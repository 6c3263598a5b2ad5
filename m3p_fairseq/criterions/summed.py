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
