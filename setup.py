"""museformer-plugin: Museformer (NeurIPS 2022) as a fairseq --user-dir plugin, with its MIDI tokenizer.

fairseq itself is NOT listed in install_requires: install `fairseq-fixed==0.12.3.1` with
`--no-deps --no-build-isolation` after torch (see README, "Quick start", or simply run `make install`).
Listing it here would make pip resolve its torchaudio requirement, which replaces torch with a CUDA build.
"""
from setuptools import find_packages, setup

# fairseq-fixed's real runtime needs (it is installed with --no-deps), see README, "Quick start".
FAIRSEQ_NEEDS = [
    "cffi",
    "cython",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "regex",
    "sacrebleu>=1.4.12",
    "bitarray",
    "scikit-learn",
    "packaging",
]

setup(
    name="museformer-plugin",
    version="0.1.0",
    description="Museformer FC-Attention language model for symbolic music, as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["data_prep", "data_prep.*", "museformer_plugin", "museformer_plugin.*",
                                    "museformer_tools", "museformer_tools.*", "museformer_analysis",
                                    "museformer_analysis.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy<2",  # fairseq's compiled extensions and np.int/np.float uses break with numpy 2
        "miditoolkit>=1.0",
        "symusic>=0.5",  # the default MIDI reader of museformer-prep encode (C++ parser; same tokens as miditoolkit)
        "pebble>=5.0",  # per-file time limits in museformer-prep encode (a stuck worker is replaced)
        "tqdm",
        "tensorboardX",
        "matplotlib",  # museformer-analyze's pictures (the demo writes piano rolls and the L_t plot)
        *FAIRSEQ_NEEDS,
    ],
    extras_require={
        "dev": ["pytest", "hypothesis"],
        # the built-in demo corpus: scores bundled with music21, written out as MIDI
        "corpus": ["music21>=9"],
        # kept for old install lines: symusic is now a dependency (the default reader)
        "fast": [],
        # benchmarks/tokenize_vs_miditok.py
        "bench": ["miditok", "symusic"],
    },
    entry_points={
        "console_scripts": [
            "museformer-prep=data_prep.cli:main",
            "museformer-sample=museformer_tools.sample:main",
            "museformer-eval-ppl=museformer_tools.eval_ppl:main",
            "museformer-analyze=museformer_analysis.cli:main",
            "museformer-import-original=museformer_tools.import_original:main",
        ]
    },
)
