"""Lets ``fairseq-hydra-train`` compose the configs of a ``--user-dir`` plugin (fairseq issue 5229).

fairseq gives Hydra a task's, criterion's or optimizer's defaults when the module registering it is
imported (``register_task`` stores its dataclass in Hydra's ConfigStore). ``fairseq-hydra-train``
imports ``common.user_dir`` only once Hydra has composed the config, so a plugin's
``- task: m3p_retrieval`` in a defaults list is unknown at that moment, and a command-line override
of a field the YAML leaves out fails (``Key 'alpha' is not in struct``).

Hydra imports every module of the ``hydra_plugins`` namespace, and asks each SearchPathPlugin for
its search path, before it composes. This plugin then, only when the running application is
fairseq's, imports the user dir that the command line (``common.user_dir=...``) or the primary
config names, through fairseq's own ``import_user_module``, and gives each legacy (argparse)
architecture of that user dir a ``model`` node in the ConfigStore: the model's fields as
fairseq-train's parser holds them for ``--arch NAME`` (the model's flag defaults, then the
architecture function), so ``- model: m3p_base`` and ``model.encoder_layers=6`` work as they do for
a dataclass model. It touches nothing else.
"""
import argparse
import os
import sys

from hydra.plugins.search_path_plugin import SearchPathPlugin


HYDRA_TRAIN = "fairseq_cli.hydra_train"


class FairseqUserDirPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path):
        # only fairseq-hydra-train: fairseq-train, the hub and other in-process fairseq users compose
        # with Hydra too, and their command lines are not Hydra's
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        if HYDRA_TRAIN not in sys.modules and getattr(main, "name", None) != HYDRA_TRAIN:
            return
        user_dir = requested_user_dir()
        if user_dir:
            import_user_dir(user_dir)


def requested_user_dir(argv=None):
    """``common.user_dir`` as the command line sets it, else as the primary config (or a config its
    defaults list includes from the same folder) sets it; None when neither does."""
    from hydra._internal.utils import get_args_parser  # the parser fairseq_cli.hydra_train itself reads

    args, _ = get_args_parser().parse_known_args(argv)
    for override in reversed(args.overrides or []):
        key, _, value = override.lstrip("+~").partition("=")
        if key == "common.user_dir" and value:
            return value
    for folder in (args.config_dir, args.config_path):  # --config-path: only an absolute one is found here
        if folder and args.config_name:
            found = _user_dir_in(os.path.abspath(folder), args.config_name, seen=set())
            if found:
                return found
    return None


def _user_dir_in(folder, name, seen):
    from omegaconf import OmegaConf

    path = os.path.join(folder, name if name.endswith(".yaml") else name + ".yaml")
    if path in seen or not os.path.isfile(path):
        return None
    seen.add(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # Hydra reads the file next and reports what is wrong with it
        return None
    found = OmegaConf.select(cfg, "common.user_dir", default=None)
    if found:
        return found
    for entry in cfg.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            found = _user_dir_in(folder, entry, seen)
            if found:
                return found
    return None


def import_user_dir(user_dir):
    from fairseq import utils

    utils.import_user_module(argparse.Namespace(user_dir=user_dir))
    register_legacy_architectures(os.path.basename(os.path.normpath(user_dir)))


def register_legacy_architectures(module_name):
    """A ``model`` ConfigStore node for each architecture of ``module_name`` whose model has no
    dataclass: what fairseq-train's parser would hold for ``--arch NAME`` and no model flags."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, MODEL_DATACLASS_REGISTRY
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for arch, model_cls in ARCH_MODEL_REGISTRY.items():
        if not model_cls.__module__.startswith(module_name + ".") or arch in MODEL_DATACLASS_REGISTRY:
            continue
        # fairseq-train's namespace for these flags: the model's own defaults (its flags without one are
        # left out, as fairseq's parser suppresses them), then the architecture function
        parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS, add_help=False)
        model_cls.add_args(parser)
        args = parser.parse_args([])
        ARCH_CONFIG_REGISTRY[arch](args)
        node = {**vars(args), "_name": arch}
        store.store(name=arch, group="model", node=node, provider=module_name)
