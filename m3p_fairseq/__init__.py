"""M3P (multitask, multilingual, multimodal pre-training) as a fairseq plugin.

``fairseq-train DATA --user-dir m3p_fairseq --task multitask_multimodal --arch m3p_base ...``
imports this package, which registers the tasks, models and criterions below and the checkpoint
allowlist for torch's weights_only loading.
"""
from . import checkpoint_guard, distributed, errors, safe_globals

safe_globals.register()
errors.install_excepthook()
distributed.install()  # CPU workers under fairseq's launchers, --bf16 without a TPU
checkpoint_guard.install()  # kill-anywhere resume, one line for a checkpoint that would run code

from . import criterions, models, tasks  # noqa: E402,F401  (registers with fairseq)
from .hub import M3PHub  # noqa: E402,F401

__version__ = "0.1.0"
