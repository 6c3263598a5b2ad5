from .multitask_multimodal import MultitaskMultimodalTask  # noqa: F401
from .captioning import M3PCaptioningTask  # noqa: F401
from .retrieval import M3PRetrievalTask  # noqa: F401
from .xnli import M3PXNLITask  # noqa: F401
from .mmt import M3PMMTTask  # noqa: F401
from .ntg import M3PNTGTask  # noqa: F401
from .iglue import M3PMaRVLTask, M3PXGQATask, M3PXVNLITask  # noqa: F401
