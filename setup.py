"""ipo-md: online IPO, IPO-MD and the preference-optimisation methods they are
compared with, as a JAX/Flax T5X-style training framework."""

import setuptools

CORE = [
    "jax>=0.7,<0.11",
    "flax>=0.11,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "gin-config>=0.5,<0.6",
    "seqio>=0.0.19,<0.1",
    "tensorflow-datasets>=4.9,<5",
    "sentencepiece>=0.2,<0.3",
    "clu>=0.0.10,<0.1",
    "tensorboard>=2.15,<3",
    "absl-py>=2.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "safetensors>=0.4",
    "rouge-score>=0.1.2",
    # TFDS needs it to build XSum from the manual tarball.
    "importlib_resources>=6",
]

setuptools.setup(
    name="ipo-md",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    # tasks/ and gin/ are top-level folders of the repository; they install
    # as the packages ipo_md_tasks (the seqio tasks) and ipo_md_gin (the gin
    # files, found by ipo_md.cli.gin_flags.gin_dir()).
    packages=setuptools.find_packages(include=["ipo_md", "ipo_md.*"])
    + ["ipo_md_tasks", "ipo_md_gin"],
    package_dir={"ipo_md_tasks": "tasks", "ipo_md_gin": "gin"},
    package_data={"ipo_md": ["data/assets/*"],
                  "ipo_md_gin": ["*.gin", "**/*.gin"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # Parity tests against Hugging Face; kept apart so the core stays lean.
        # torch 2.13.0 is the CPU wheel available offline on the dev machines.
        "hf": ["torch==2.13.0", "transformers>=4.45"],
        # Orbax imports google-cloud-storage for any gs:// checkpoint directory
        # without declaring it.
        "gcs": ["google-cloud-storage>=2.10,<4"],
    },
    entry_points={
        "console_scripts": [
            "ipo-md=ipo_md.cli.main:main",
            "t5x=ipo_md.cli.main:main",
        ]
    },
)
