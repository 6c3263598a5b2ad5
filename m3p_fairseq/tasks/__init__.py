from .multitask_multimodal import MultitaskMultimodalTask  # noqa: F401
