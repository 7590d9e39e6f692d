"""pip package for aotd_jax: the library (`aotd_jax`) and the expert tools (`experts`)."""
import setuptools

setuptools.setup(
    name="aotd_jax",
    version="0.1.0",
    description="Agent-of-Thoughts Distillation (AoTD, CVPR 2025) in JAX/Flax NNX.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["aotd_jax", "aotd_jax.*", "experts", "experts.*"]),
    # C++ sources of the XLA FFI kernels, compiled on first use (aotd_jax/kernels/build.py).
    package_data={"aotd_jax.kernels": ["*.cc"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "grain",
        "ml_collections",
        "absl-py",
        "safetensors",
        "numpy",
        "av",
        "tokenizers",
        "tensorboardX",
        "matplotlib",
        "msgpack>=1.0",  # the sandbox's data-only wire (aotd_jax/agent/sandbox_wire.py)
        "Pillow",  # image resizing (video preprocessing, the crops of experts.tools.Find)
    ],
    extras_require={
        # torch is pinned: a CPU wheel of 2.13.0 is what the parity tests were written against.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "transformers>=4.45"],
        "hf": ["torch==2.13.0", "transformers>=4.45"],
    },
)
