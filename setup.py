"""pip package for aotd_jax: the library (`aotd_jax`), the expert tools (`experts`), the
launchers (`launch`) and the configs (`configs`).

  pip install -c constraints.txt -e .            # CPU; tokenizers through transformers (no torch)
  pip install -c constraints.txt -e '.[tpu]'     # TPU VMs (libtpu)
  pip install -c constraints.txt -e '.[cuda]'    # NVIDIA GPUs (CUDA 12 wheels)
  pip install -e '.[gcs]'                        # gs:// workdirs, checkpoints and datasets
  pip install -e '.[hf]'                         # PyTorch transformers (parity checks, export loading)
"""

import setuptools

setuptools.setup(
  name="aotd_jax",
  version="0.1.0",
  description="Agent-of-Thoughts Distillation (AoTD, CVPR 2025) in JAX/Flax NNX.",
  python_requires=">=3.11",
  packages=setuptools.find_packages(
    include=[
      "aotd_jax",
      "aotd_jax.*",
      "experts",
      "experts.*",
      "launch",
      "launch.*",
      "configs",
      "configs.*",
    ]
  )
  + ["aotd_jax.prompts"],
  # The prompt files (data only) are installed as aotd_jax/prompts/, where
  # `aotd_jax.agent.programs.PROMPTS_DIR` finds them in an installed package.
  package_dir={"aotd_jax.prompts": "data/prompts"},
  # C++ sources of the XLA FFI kernels, compiled on first use (aotd_jax/kernels/build.py).
  package_data={
    "aotd_jax.kernels": ["*.cc"],
    "launch.tpu": ["*.md"],
    "aotd_jax.prompts": ["*.txt", "examples/*.txt"],
    "aotd_jax.projects.toyworld": ["examples/*.txt"],
  },
  install_requires=[
    "jax>=0.7",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint",
    "grain",
    "ml_collections",
    "absl-py",
    "etils[epath]",
    "fsspec",
    "safetensors",
    "numpy",
    "av",
    "tokenizers",
    # AutoTokenizer / chat templates for training and evaluation; transformers does not
    # pull torch (that is the `hf` extra).
    "transformers>=4.45",
    "jinja2",
    "tensorboardX",
    "matplotlib",
    "msgpack>=1.0",  # the sandbox's data-only wire (aotd_jax/agent/sandbox_wire.py)
    "Pillow",  # image resizing (video preprocessing, the crops of experts.tools.Find)
  ],
  extras_require={
    "tpu": ["jax[tpu]"],
    "cuda": ["jax[cuda12]"],
    "gcs": ["gcsfs", "google-cloud-storage"],
    # torch is pinned: a CPU wheel of 2.13.0 is what the parity tests were written against.
    "hf": ["torch==2.13.0", "transformers>=4.45"],
    "test": ["pytest", "pytest-xdist", "ruff", "torch==2.13.0", "transformers>=4.45"],
  },
)
