from .m3p_pretrain import M3PPretrainCriterion  # noqa: F401
from .m3p_generation import M3PGenerationCriterion  # noqa: F401
from .m3p_downstream import M3PClassificationCriterion, M3PRetrievalCriterion  # noqa: F401
from .iglue import IGLUECriterion  # noqa: F401
