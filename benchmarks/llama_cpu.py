r"""Llama on CPU: our jitted train step and KV-cache decode vs transformers' PyTorch, same weights.

  python benchmarks/llama_cpu.py                 # ~30M params, batch 8 x 256, f32, AdamW
  python benchmarks/llama_cpu.py --variant=tiny  # seconds, for a quick check

Prints, from one run on one CPU: the f32 matmul peak (a large jnp matmul), the train-step time of
both (each also as a fraction of that peak; step FLOPs = 6 x matmul params x tokens + attention),
and greedy decode tokens/s with a KV cache vs transformers' `generate`. JAX and PyTorch steps are
interleaved so that load from other processes hits both alike; the median is reported.

Ours is measured on one JAX device and on a mesh over `--devices` host CPU devices (the host's
cores split into JAX devices, `jax_num_cpu_devices`): the train step on `--train_mesh`, decoding
on `--decode_mesh` (weights sharded, as `hf.from_pretrained(..., mesh=...)` places them).
Losses and tokens are checked equal across all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matmul_peak_flops(n: int = 2048, reps: int = 6) -> float:
  """FLOP/s of a large f32 jnp matmul (best of `reps`)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(reps))
  return 2 * n**3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def train_flops(cfg, batch: int, seq: int, matmul_params: int) -> float:
  """6 x matmul params x tokens, plus QK^T and PV (forward 4·L²·heads·head_dim, x3 with backward)."""
  attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq * seq * batch
  return 6 * matmul_params * batch * seq + attn


def parse_mesh(spec: str) -> dict:
  """'tensor=2' / 'data=2,tensor=1' -> {'tensor': 2} (axes of `aotd_jax.sharding.make_mesh`)."""
  out = {}
  for item in filter(None, spec.split(",")):
    axis, _, size = item.partition("=")
    if axis not in ("data", "fsdp", "tensor") or not size.lstrip("-").isdigit():
      raise SystemExit(
        f"bad mesh spec {spec!r}: want e.g. 'tensor=2' or 'data=2' (axes data, fsdp, tensor)"
      )
    out[axis] = int(size)
  return out


def mesh_scope(mesh):
  """The contexts that our model code runs under on a mesh (nothing for one device)."""
  import contextlib
  from flax.core import spmd
  from aotd_jax import sharding

  stack = contextlib.ExitStack()
  if mesh is not None:
    import jax

    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(spmd.logical_axis_rules(sharding.DEFAULT_RULES))
  return stack


def place_batch(x, mesh):
  """Puts a host batch on the mesh, split over its batch axes (replicated where they are 1)."""
  import jax

  if mesh is None:
    return jax.numpy.asarray(x)
  from jax.sharding import NamedSharding, PartitionSpec as P

  return jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))


def rotated(items: list, i: int) -> list:
  """`items` rotated by `i`: each round starts with the next contender, so none always runs first
  after a given other one (torch's OpenMP threads spin for a while after each of its steps)."""
  i %= len(items)
  return items[i:] + items[:i]


def set_host_devices(n: int) -> None:
  """Splits this host's CPU into `n` JAX devices; must run before JAX initialises its backend."""
  import jax

  jax.config.update("jax_num_cpu_devices", n)


def first_step(mesh, build, host_inputs) -> dict:
  """Builds our train step on `mesh` (None: one device) with `build(mesh)` -> (graphdef, params,
  opt_state, step), puts the batch there and runs one step: a record for `time_rounds`."""
  with mesh_scope(mesh):
    graphdef, params, opt_state, step = build(mesh)
    inputs = tuple(place_batch(x, mesh) for x in host_inputs)
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, *inputs)
    loss.block_until_ready()
  return dict(
    mesh=mesh,
    graphdef=graphdef,
    state=[params, opt_state],
    step=step,
    inputs=inputs,
    loss=float(loss),
    compile=time.perf_counter() - start,
    times=[],
    cpu=[],
  )


def run_step(r: dict) -> None:
  """One more step of a `first_step` record (its state is donated and replaced)."""
  with mesh_scope(r["mesh"]):
    *r["state"], loss = r["step"](*r["state"], *r["inputs"])
    loss.block_until_ready()


def time_rounds(calls, rounds: int) -> None:
  """Runs every (record, fn) of `calls` once per round, rotated, appending wall and CPU seconds
  to the record's `times` / `cpu`."""
  for i in range(rounds):
    for record, call in rotated(calls, i):
      start, cpu = time.perf_counter(), time.process_time()
      call()
      record["times"].append(time.perf_counter() - start)
      record["cpu"].append(time.process_time() - cpu)


def print_first_losses(runs: dict, torch_loss: float) -> None:
  print(
    "first-step loss: "
    + "  ".join(f"jax[{n}] {r['loss']:.4f}" for n, r in runs.items())
    + f"  torch {torch_loss:.4f}  (jax compile+run "
    + ", ".join(f"{r['compile']:.1f}s" for r in runs.values())
    + ")"
  )


def build_jax_step(model, lr=1e-4, loss="full"):
  """A jitted AdamW step on (params, opt_state), both donated; next-token CE without a one-hot.

  loss="full" scores all L positions and masks the last (its label would wrap around), so the
  LM-head dots keep the batch x L token count; "shift" slices logits[:, :-1] as transformers does.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(lr, weight_decay=0.0)

  def loss_fn(p, ids):
    logits = nnx.merge(graphdef, p)(ids).logits.astype(jnp.float32)
    if loss == "shift":
      logits, labels, weight = logits[:, :-1], ids[:, 1:], jnp.ones(ids[:, 1:].shape, jnp.float32)
    else:
      labels = jnp.roll(ids, -1, axis=1)
      weight = (jnp.arange(ids.shape[1]) < ids.shape[1] - 1).astype(jnp.float32)[None]
    gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = (jax.nn.logsumexp(logits, axis=-1) - gold) * weight
    return jnp.sum(nll) / jnp.sum(jnp.broadcast_to(weight, nll.shape))

  @jax.jit
  def init(p):
    return tx.init(p)

  def step(p, opt_state, ids):
    loss, grads = jax.value_and_grad(loss_fn)(p, ids)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  return graphdef, params, init(params), jax.jit(step, donate_argnums=(0, 1))


def build_torch_step(model, lr=1e-4):
  import torch

  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

  def step(ids):
    logits = model(input_ids=ids).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return step


def add_row_args(parser) -> None:
  """The options both CPU model benchmarks share: mesh rows, precision rows, host memory."""
  parser.add_argument(
    "--devices",
    type=int,
    default=2,
    help="host CPU devices for the mesh rows (1: single-device rows only)",
  )
  parser.add_argument(
    "--train_mesh",
    default="data=2;tensor=2",
    help="meshes of the train-step mesh rows, ';'-separated",
  )
  parser.add_argument("--decode_mesh", default="tensor=2", help="mesh of the decode mesh row")
  parser.add_argument(
    "--precision_rows",
    default="highest,high",
    help="comma-separated matmul_precision values to also time on one device: "
    "'highest' (bf16x6 on AMX CPUs, float32 accuracy), 'high' (bf16x3); "
    "XLA's float32 dots on CPUs without AMX; '' for none",
  )
  parser.add_argument(
    "--keep_freed_memory",
    type=int,
    default=1,
    help="1: keep freed host memory for reuse in this process, for both sides "
    "(aotd_jax/host_memory.py: no page faults on per-step buffers)",
  )


def keep_memory(args) -> bool:
  """Applies `--keep_freed_memory`; whether it took effect."""
  from aotd_jax import host_memory

  return bool(args.keep_freed_memory) and host_memory.keep_freed_memory()


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--variant", default="bench", choices=["bench", "tiny"])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--loss", default="full", choices=["full", "shift"])
  parser.add_argument("--skip_decode", action="store_true")
  add_row_args(parser)
  args = parser.parse_args(argv)
  kept = keep_memory(args)
  set_host_devices(args.devices)

  import jax
  import torch
  import transformers
  from configs.llama_tiny import get_config
  from aotd_jax import hf, sharding
  from aotd_jax.models.generate import generate

  fields = dict(get_config(args.variant).model)
  torch.manual_seed(0)
  ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields, initializer_range=0.02))
  tmp_dir = tempfile.TemporaryDirectory()
  tmp = tmp_dir.name
  ref.save_pretrained(tmp)
  meshes = {"1 device": None}
  if args.devices > 1:
    for spec in filter(None, args.train_mesh.split(";")):
      meshes[f"mesh {spec}"] = sharding.make_mesh(parse_mesh(spec))
  model = hf.from_pretrained(tmp)
  cfg = model.config
  n_params = sum(p.numel() for p in ref.parameters())
  # The embedding lookup is no matmul (unless tied, when it is also the LM head); norms neither.
  norms = sum(p.numel() for n, p in ref.named_parameters() if "norm" in n)
  matmul_params = (
    n_params - norms - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
  )
  print(
    f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({len(jax.devices())} "
    f"{jax.devices()[0].platform} devices), torch {torch.__version__} ({torch.get_num_threads()} threads), "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, keep_freed_memory={kept}"
  )
  print(
    f"model: {n_params / 1e6:.1f}M params ({matmul_params / 1e6:.1f}M in matmuls), "
    f"batch {args.batch} x seq {args.seq}, float32, AdamW"
  )

  peak = matmul_peak_flops()
  print(f"f32 matmul peak (jnp 2048^3): {peak / 1e9:.1f} GFLOP/s")

  # ---- train step: ours on each mesh, interleaved with torch ----
  rng = np.random.default_rng(0)
  ids_np = rng.integers(3, cfg.vocab_size, (args.batch, args.seq)).astype(np.int32)
  ids_torch = torch.tensor(ids_np, dtype=torch.long)
  build = lambda mesh: build_jax_step(
    model if mesh is None else hf.from_pretrained(tmp, mesh=mesh), loss=args.loss
  )
  runs = {name: first_step(mesh, build, (ids_np,)) for name, mesh in meshes.items()}
  from aotd_jax.kernels import amx_matmul
  from aotd_jax.models.options import with_options

  precision_rows = {}  # row name -> matmul_precision
  for precision in filter(None, args.precision_rows.split(",")):
    name = f"1 device, {precision}{'' if amx_matmul.available() else ' (no AMX: f32 dots)'}"
    precision_rows[name] = precision
    runs[name] = first_step(
      None,
      lambda _, p=precision: build_jax_step(
        with_options(hf.from_pretrained(tmp), matmul_precision=p), loss=args.loss
      ),
      (ids_np,),
    )
  torch_step = build_torch_step(ref.train())
  print_first_losses(runs, float(torch_step(ids_torch)))
  torch_run = dict(times=[], cpu=[])
  calls = [(r, lambda r=r: run_step(r)) for r in runs.values()]
  time_rounds(calls + [(torch_run, lambda: torch_step(ids_torch))], args.steps)
  flops = train_flops(cfg, args.batch, args.seq, matmul_params)
  tt = statistics.median(torch_run["times"])
  print(
    f"train step: torch {tt * 1e3:.0f} ms ({flops / tt / peak:.0%} of peak), "
    f"CPU time {statistics.median(torch_run['cpu']) * 1e3:.0f} ms"
  )
  for name, r in runs.items():
    tj = statistics.median(r["times"])
    print(
      f"train step: jax[{name}] {tj * 1e3:.0f} ms ({flops / tj / peak:.0%} of peak), "
      f"CPU time {statistics.median(r['cpu']) * 1e3:.0f} ms  ->  jax/torch speed {tt / tj:.2f}x"
    )
  print(
    "  step times (ms): "
    + "; ".join(
      f"{name} " + " ".join(f"{t * 1e3:.0f}" for t in r["times"])
      for name, r in [("torch", torch_run), *runs.items()]
    )
  )

  # ---- greedy decode with a KV cache ----
  if args.skip_decode:
    return
  from flax import nnx

  prompt = rng.integers(3, cfg.vocab_size, (args.batch, args.prompt)).astype(np.int32)
  mask = np.ones_like(prompt)
  kw = dict(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
  trained = runs["1 device"]
  model = nnx.merge(
    trained["graphdef"], trained["state"][0]
  )  # the step donated the original buffers
  with tempfile.TemporaryDirectory() as tmp2:  # the same trained weights for every row
    hf.save_pretrained(model, tmp2)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp2).eval()
    decoders = {"1 device": (None, model)}
    if args.devices > 1:
      mesh = sharding.make_mesh(parse_mesh(args.decode_mesh))
      decoders[f"mesh {args.decode_mesh}"] = (mesh, hf.from_pretrained(tmp2, mesh=mesh))
    for name, precision in precision_rows.items():  # the prompt's prefill takes the AMX kernel
      decoders[name] = (None, with_options(model, matmul_precision=precision))

  def run_jax(name):
    mesh, m = decoders[name]
    with mesh_scope(mesh):
      return generate(m, prompt, mask, **kw).sequences.block_until_ready()

  seqs = {name: np.asarray(run_jax(name)) for name in decoders}  # compile
  records = {name: dict(times=[], cpu=[]) for name in decoders}
  torch_run = dict(times=[], cpu=[])
  with torch.no_grad():
    tp, tm = torch.tensor(prompt, dtype=torch.long), torch.tensor(mask)
    gen_kw = dict(
      input_ids=tp, attention_mask=tm, do_sample=False, min_new_tokens=args.new_tokens, **kw
    )
    theirs = ref.generate(**gen_kw).numpy()[:, args.prompt :]  # warm-up
    calls = [(records[name], lambda name=name: run_jax(name)) for name in decoders]
    time_rounds(calls + [(torch_run, lambda: ref.generate(**gen_kw))], args.steps)
  tokens = args.batch * args.new_tokens
  # A decode step streams every matmul weight once for `batch` rows: 2 x matmul params x rows FLOPs.
  dflops = 2 * matmul_params
  tt = min(torch_run["times"])
  print(
    f"greedy decode (batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new): "
    f"torch {tokens / tt:.0f} tok/s ({dflops * tokens / tt / peak:.1%} of peak)"
  )
  for name in decoders:
    tj = min(records[name]["times"])
    same = float(np.mean(seqs[name] == theirs))
    print(
      f"greedy decode: jax[{name}] {tokens / tj:.0f} tok/s ({dflops * tokens / tj / peak:.1%} of peak)  "
      f"->  jax/torch speed {tt / tj:.2f}x  (same tokens as torch: {same:.0%})"
    )
  tmp_dir.cleanup()


if __name__ == "__main__":
  main()
