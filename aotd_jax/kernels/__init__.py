"""Hand-written XLA FFI kernels for the CPU, compiled on first use (`build.py`)."""
