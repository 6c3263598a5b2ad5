"""m3p-fairseq: M3P (multitask, multilingual, multimodal pre-training) as a fairseq plugin.

torch is deliberately not pinned here: install ``torch==2.13.0`` (CPU) or the CUDA build you
want first; an unpinned torch requirement makes pip fetch a multi-GB CUDA wheel.
fairseq is built with ``--no-build-isolation`` against that torch (see the Makefile).
"""
from setuptools import find_namespace_packages, find_packages, setup

setup(
    name="m3p-fairseq",
    version="0.1.0",
    description="M3P multitask multilingual multimodal pre-training as a fairseq plugin",
    python_requires=">=3.9",
    packages=find_packages(include=["m3p_fairseq", "m3p_fairseq.*", "preprocess", "preprocess.*"])
    # Hydra imports this namespace before composing: fairseq-hydra-train then knows the plugin's configs
    + find_namespace_packages(include=["hydra_plugins"]),
    install_requires=[
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
        'fairseq==0.12.2; python_version < "3.11"',
        "hydra-core==1.3.2",
        "omegaconf==2.3.0",
        "numpy",
        "h5py",
        "lmdb",
        "sentencepiece",
        "sacrebleu>=1.4.12",
        "pycocoevalcap",
        "tqdm",
        "bitarray",
        "regex",
        "tensorboardX",
        "fairscale==0.4.13",  # fairseq's --zero-sharding os (OSS) and --ddp-backend fully_sharded
    ],
    extras_require={
        "test": ["pytest", "matplotlib"],
        "bench": ["transformers"],
    },
    entry_points={
        "console_scripts": [
            "m3p-make-world = preprocess.make_world:main",
            "m3p-build-spm = preprocess.build_spm:main",
            "m3p-binarize = preprocess.binarize:main",
            "m3p-prepare-world = preprocess.prepare_world:main",
            "m3p-retrieval-eval = m3p_fairseq.evaluation.downstream_cli:retrieval_main",
            "m3p-results-table = m3p_fairseq.evaluation.tables:main",
            "m3p-plots = m3p_fairseq.evaluation.plots:main",
            "m3p-import-xlmr = preprocess.import_xlmr:main",
            "m3p-import-m3p = preprocess.import_m3p:main",
            "m3p-import-regions = preprocess.detectors:main",
            "m3p-merge-manifests = preprocess.detectors:merge_main",
            "m3p-import-dataset = preprocess.datasets:main",
            "m3p-import-iglue = preprocess.iglue:main",
            "m3p-caption-score = m3p_fairseq.evaluation.caption_score_cli:main",
            "m3p-downstream-eval = m3p_fairseq.evaluation.downstream_cli:main",
        ],
    },
)
