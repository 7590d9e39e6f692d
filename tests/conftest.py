"""Test setup: 8 forced host CPU devices (mesh tests) and XLA's CPU backend at LLVM -O0, before
JAX is imported anywhere."""

import os

# Compilation is most of the suite's CPU time (tiny models, each program run a few times), and
# `--xla_backend_optimization_level=0` makes it about 1.6x cheaper on the tests' programs. It
# changes only LLVM's optimisation of each XLA program's machine code: the programs (HLO after
# XLA's passes, its fusions) are the ones a user compiles, rounding can differ in the last bit
# (a multiply-add LLVM would fuse), and the C++ kernels are built as they ship. Launcher
# subprocesses inherit it; the few tests that set their own XLA_FLAGS add it.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib

import pytest

# -- file order for `--dist loadfile` ------------------------------------------------------------
# `make test` hands whole files to two workers in collection order (`--no-loadscope-reorder`), so
# the files that take longest go first: a long file that started last would run alone at the end.
# Longest first, as `make test` measured them (worker wall seconds per file, the files of 18 s
# and more, in a fresh clone of 3542ba7 on the idle 2-core Xeon, 2026-12-05 07:28; CONTRIBUTING.md
# "Tests"); files not listed keep their order after these. tests/test_run_order.py checks that each
# one exists.
LONGEST_FILES = (
  "test_rehearse.py",
  "test_demo.py",
  "test_qwen2vl_configs.py",
  "test_train.py",
  "test_coalesce_experts.py",
  "test_qwen2_vl.py",
  "test_vision_experts.py",
  "test_multihost.py",
  "test_onevision_configs.py",
  "test_evaluate_cli.py",
  "test_attention_kernel.py",
  "test_llava_next_video.py",
  "test_train_metrics.py",
  "test_experts_backends.py",
  "test_engine.py",
  "test_causal_attention.py",
  "test_llava_onevision.py",
  "test_llava_prefix_cache.py",
  "test_pipeline.py",
  "test_llama.py",
  "test_evaluate_orbax_student.py",
  "test_language_experts.py",
  "test_llm.py",
  "test_open_ended_judge.py",
  "test_layers.py",
  "test_eval_student.py",
  "test_remat.py",
  "test_amx_matmul.py",
  "test_train_data_cache.py",
)


def longest_first(items: list) -> list:
  """`items` with the files of LONGEST_FILES first, in its order (a stable sort: the tests of a
  file and the other files keep their order)."""
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  return sorted(items, key=lambda item: rank.get(item.path.name, len(rank)))


# -- kernel coverage ----------------------------------------------------------------------------
# A kernel test either runs the C++ kernel or skips with the reason; it never passes on XLA's ops
# in the kernel's name. Tests that take a kernel through a model use `expect_kernel`; the kernels'
# own test files mark theirs with a `skipif` whose reason names the kernel. Both get the `kernel`
# marker, and the terminal summary says how many ran.
_KERNEL_REASON_WORDS = ("kernel", "AMX")


@pytest.fixture
def expect_kernel():
  """`with expect_kernel(module, *targets, when=True):` skips the test (with the reason) when
  `module.available()` is False here, clears JAX's caches so the body traces afresh, and fails
  unless the body emitted a call to each FFI target (`aotd_jax.kernels.build.EMITTED`).
  `when=False` (the XLA parametrisation) checks nothing."""

  @contextlib.contextmanager
  def expect(module, *targets, when=True):
    if not when:
      yield
      return
    import jax

    from aotd_jax.kernels import build

    if jax.default_backend() != "cpu" or not module.available():
      pytest.skip(
        f"{module.__name__} cannot run here (CPU backend, its instruction set and a "
        "C++ compiler needed): the XLA parametrisation covers this path"
      )
    jax.clear_caches()
    before = {t: build.EMITTED[t] for t in targets}
    yield
    missing = [t for t in targets if build.EMITTED[t] == before[t]]
    assert not missing, f"the kernel never ran ({missing} not emitted): the test took XLA's ops"

  return expect


def pytest_collection_modifyitems(config, items):
  items[:] = longest_first(items)
  for item in items:
    params = getattr(getattr(item, "callspec", None), "params", {})
    # a `cpu_kernels` parametrisation through `expect_kernel`; other tests say
    # `@pytest.mark.kernel` themselves
    uses = "expect_kernel" in item.fixturenames and params.get("cpu_kernels", False)
    gated = any(
      any(w in str(m.kwargs.get("reason", "")) for w in _KERNEL_REASON_WORDS)
      for m in item.iter_markers("skipif")
    )
    if uses or gated:
      item.add_marker(pytest.mark.kernel)


_kernel_outcomes = {"ran": 0, "skipped": 0, "failed": 0}


def pytest_runtest_logreport(report):
  if "kernel" not in report.keywords:
    return
  if report.skipped:
    _kernel_outcomes["skipped"] += 1
  elif report.failed:
    _kernel_outcomes["failed"] += 1
  elif report.when == "call":
    _kernel_outcomes["ran"] += 1


def pytest_terminal_summary(terminalreporter):
  o = _kernel_outcomes
  if any(o.values()):
    terminalreporter.write_line(
      f"kernel tests: {o['ran']} ran the C++ kernels, {o['skipped']} "
      f"skipped (kernel unavailable here), {o['failed']} failed"
    )
