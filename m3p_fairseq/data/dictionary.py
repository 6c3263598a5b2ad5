"""The fairseq dictionary of M3P's data: dict.txt, then ``<mask>`` last, as in XLM-R (250,001 pieces + <mask>).

The tasks read it here, and so do the weight importers (preprocess/weights.py), which need the same ids
but no task.
"""
import os

from fairseq.data import Dictionary

from ..errors import M3PDataError


def load_dictionary(path):
    if not os.path.exists(path):
        raise M3PDataError(f"{path}: dictionary not found")
    d = Dictionary.load(path)
    d.add_symbol("<mask>")
    return d
