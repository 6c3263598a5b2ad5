from .m3p_pretrain import M3PPretrainCriterion  # noqa: F401
