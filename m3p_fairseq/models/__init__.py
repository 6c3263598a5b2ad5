from .m3p import M3PModel  # noqa: F401
from .m3p_seq2seq import M3PSeq2SeqModel  # noqa: F401
