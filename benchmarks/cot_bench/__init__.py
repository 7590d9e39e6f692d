"""benchmarks/cot_throughput.py's parts (its docstring documents the benchmark and its flags)."""
