"""The allowlist that lets torch's ``weights_only`` loading read fairseq checkpoints.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``; fairseq checkpoints hold argparse
and omegaconf objects, which that refuses. Registering exactly these types keeps the protection
(a checkpoint still cannot run code) while fairseq-train --restore-file, fairseq-generate --path
and the hub load normally. Never switch the protection off for the whole process instead.
"""
import argparse
import collections
import typing

import numpy as np
import torch


def allowlist():
    items = [argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
             dict, list, tuple, set, int, float, bool, str, np.ndarray, np.dtype]
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

        items += [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode,
                  FloatNode, BooleanNode]
    except ImportError:
        pass
    core = getattr(np, "_core", None) or np.core
    items += [core.multiarray._reconstruct, core.multiarray.scalar,
              (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
              (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        items += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    try:
        from fairseq.distributed.utils import _TensorPlaceholder

        items.append(_TensorPlaceholder)
    except ImportError:
        pass
    return items


def register():
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(allowlist())
