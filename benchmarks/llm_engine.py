r"""Local Flax LLM throughput: continuous batching (the engine) vs static batches, same prompts.

`LocalLlama` on a small random Llama (ids-as-words tokenizer) completes `--prompts` prompts of
8..`--max_prompt` tokens in three calls, one per max_new_tokens value (`--new`, as the CoT
job's program / rewrite / judge stages each have their own). Two workloads (`--lengths`):

  mixed:  each prompt's reply length is drawn from a log-normal (median `--median` of its
          call's max_new_tokens, `--sigma`; clipped to [1, max_new_tokens]), as real replies
          vary. The model (`Countdown`) runs the random Llama's full forward pass, then steers
          the greedy pick: a token in the countdown range [C, C + K) makes the next one t - 1,
          C makes EOS; each prompt ends in C + its reply length - 1. Both paths run the same
          model, so the replies are the same and only the batching differs.
  free:   the random model's own greedy tokens, EOS the token most rows emit in a free run:
          a random model repeats itself, so few rows end early (near-equal row lengths, the
          engine's worst case).

Modes:

  static:            `batching="static"`: each call sorts its prompts by length and runs
                     `generate` on `--slots` rows at a time; the calls take turns.
  engine:            `batching="continuous"`, the three calls one after another.
  engine_threads:    the engine, the three calls from three threads at once (the pipelined
                     CoT job's stages sharing one model).

`--steps_per_call 16 8` adds an engine per further value (`engine_steps8`, `..._threads`).
Reported per mode: prompts/s and generated tokens/s (tokens up to and including EOS), and
whether each mode's replies equal the static ones (greedy). Each mode runs once untimed
(compilation), then the modes alternate for `--rounds` and the best of each is kept.

  python benchmarks/llm_engine.py                      # RESULTS.md's rows (mixed lengths)
  python benchmarks/llm_engine.py --lengths free --new 16 48 96   # near-equal lengths
  python benchmarks/llm_engine.py --prompts 12 --rounds 1 --hidden 64   # a smoke run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class IdsTokenizer:
  """Text is token ids as words ("5 17 3"); enough of a tokenizer for `LocalLlama`."""

  chat_template = None

  def __init__(self, eos_token_id: int, pad_token_id: int = 0):
    self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id

  def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
    return {"input_ids": [int(w) for w in text.split()]}

  def decode(self, ids, skip_special_tokens: bool = True) -> str:  # EOS kept: counted
    return " ".join(str(i) for i in ids)


def countdown_model(model, start: int, size: int, eos: int, from_prompt=None):
  """`model` whose greedy pick is steered by a countdown (the module docstring's `mixed`).

  `from_prompt=(median, sigma)`: the prompt itself sets the reply length (for prompts made
  elsewhere, e.g. the CoT job's): the prefill forces the first token to start + L - 2 (EOS
  when L = 1), L drawn from a log-normal (median, sigma) by a hash of the prompt's tokens,
  counted from its end (left padding does not change it), clipped to [1, size + 1].
  """
  import dataclasses

  import jax.numpy as jnp
  from flax import nnx
  from jax.scipy.special import ndtri

  def one_hot(x, n):
    return (jnp.arange(n)[None, :] == x[:, None]).astype(jnp.float32)

  def drawn_first(ids, mask):
    w = ids.shape[1]
    offset = (w - 1 - jnp.arange(w)).astype(jnp.uint32)  # from the prompt's end
    weight = (offset + 1) * jnp.uint32(2654435761)
    h = jnp.sum(ids.astype(jnp.uint32) * weight * mask.astype(jnp.uint32), axis=1)
    h = (h ^ (h >> 15)) * jnp.uint32(2246822519)
    u = ((h >> 8).astype(jnp.float32) + 0.5) / 2.0**24
    length = jnp.exp(jnp.log(float(from_prompt[0])) + from_prompt[1] * ndtri(u))
    length = jnp.clip(jnp.round(length), 1, size + 1).astype(jnp.int32)
    return jnp.where(length > 1, start + length - 2, eos)

  class Countdown(nnx.Module):
    """A fed token t in [start, start + size) forces t - 1 next (start forces EOS): the
    logits get a bias of 1e4 on that token after the wrapped model's full forward pass."""

    def __init__(self, inner):
      self.inner, self.config = inner, inner.config

    def init_cache(self, *args, **kwargs):
      return self.inner.init_cache(*args, **kwargs)

    def __call__(self, input_ids, attention_mask=None, **kwargs):
      out = self.inner(input_ids, attention_mask, **kwargs)
      ids = jnp.asarray(input_ids)
      fed = ids[:, -1]  # prompts are left-padded: the last one is real
      steer = (fed >= start) & (fed < start + size)
      forced = jnp.where(fed > start, fed - 1, eos)
      if from_prompt is not None and ids.shape[1] > 1:  # a prefill: the prompt picks
        steer = jnp.ones_like(steer)
        forced = drawn_first(ids, jnp.asarray(attention_mask)[:, : ids.shape[1]])
      bias = jnp.where(steer[:, None], 1e4 * one_hot(forced, out.logits.shape[-1]), 0.0)
      logits = out.logits.at[:, -1].add(bias.astype(out.logits.dtype))
      return dataclasses.replace(out, logits=logits)

  return Countdown(model)


def build(args):
  """The model, the prompts per max_new_tokens value, the EOS id and the drawn reply lengths
  (None for `free`)."""
  import numpy as np
  from flax import nnx

  from aotd_jax.models import generate as gen
  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM

  cfg = LlamaConfig(
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    intermediate_size=args.hidden * 8 // 3,
    num_hidden_layers=args.layers,
    num_attention_heads=args.heads,
    num_key_value_heads=max(1, args.heads // 2),
    max_position_embeddings=4096,
  )
  model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.RandomState(0)
  toks = [
    rng.randint(3, args.vocab, rng.randint(8, args.max_prompt + 1)).tolist()
    for _ in range(args.prompts)
  ]
  if args.lengths == "mixed":
    eos, start = 1, 3
    if start + max(args.new) > args.vocab:
      raise ValueError(f"--vocab {args.vocab} must exceed 3 + max(--new)")
    lengths = []
    for i, t in enumerate(toks):
      new = args.new[i % len(args.new)]
      drawn = rng.lognormal(np.log(max(1.0, args.median * new)), args.sigma)
      lengths.append(int(np.clip(round(drawn), 1, new)))
      t[-1] = start + lengths[-1] - 1
    model = countdown_model(model, start, max(args.new), eos)
  else:
    # EOS: the token found in the most rows of a free greedy run of the whole prompts (after
    # their first 2 new tokens)
    width = max(map(len, toks))
    ids = np.zeros((len(toks), width), np.int32)
    mask = np.zeros((len(toks), width), np.int32)
    for r, t in enumerate(toks):  # left-padded, as `LocalLlama` pads
      ids[r, width - len(t) :], mask[r, width - len(t) :] = t, 1
    free = np.asarray(
      gen.generate(
        model, ids, mask, max_new_tokens=max(args.new), eos_token_id=None, pad_token_id=0
      ).sequences
    )[:, 2:]
    rows_with = collections.Counter(t for row in free for t in set(row.tolist()))
    eos, lengths = int(rows_with.most_common(1)[0][0]), None
  prompts = [" ".join(map(str, t)) for t in toks]
  calls = [(new, prompts[i :: len(args.new)]) for i, new in enumerate(args.new)]
  return model, calls, eos, lengths


def run(llm, calls, threaded: bool) -> tuple[float, list]:
  replies = [None] * len(calls)

  def one(i):
    new, prompts = calls[i]
    replies[i] = llm.complete(prompts, max_new_tokens=new)

  t0 = time.perf_counter()
  if threaded:
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  else:
    for i in range(len(calls)):
      one(i)
  return time.perf_counter() - t0, replies


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prompts", type=int, default=48)
  ap.add_argument("--max_prompt", type=int, default=200, help="longest prompt (tokens)")
  ap.add_argument("--lengths", choices=["mixed", "free"], default="mixed")
  ap.add_argument("--new", type=int, nargs="+", default=[8, 384, 512], help="max_new_tokens")
  ap.add_argument("--median", type=float, default=0.25, help="mixed: median reply / max_new")
  ap.add_argument("--sigma", type=float, default=0.6, help="mixed: log-normal sigma")
  ap.add_argument("--slots", type=int, default=8, help="rows at once (max_batch)")
  ap.add_argument(
    "--steps_per_call", type=int, nargs="+", default=[16], help="one engine per value"
  )
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--vocab", type=int, default=4096)
  ap.add_argument("--rounds", type=int, default=2)
  args = ap.parse_args(argv)

  from aotd_jax.agent.llm import LocalLlama

  model, calls, eos, lengths = build(args)
  tok = IdsTokenizer(eos)
  llms = {"static": LocalLlama(model=model, tokenizer=tok, max_batch=args.slots, batching="static")}
  modes = {"static": ("static", False)}
  for steps in args.steps_per_call:  # one engine per value; "engine" is the first
    name = "engine" if steps == args.steps_per_call[0] else f"engine_steps{steps}"
    llms[name] = LocalLlama(model=model, tokenizer=tok, max_batch=args.slots, steps_per_call=steps)
    modes[name] = (name, False)
    modes[f"{name}_threads"] = (name, True)
  best: dict[str, float] = {}
  replies: dict[str, list] = {}
  for r in range(args.rounds + 1):
    for mode, (which, threaded) in modes.items():
      seconds, out = run(llms[which], calls, threaded)
      replies[mode] = out
      if r and (mode not in best or seconds < best[mode]):
        best[mode] = seconds
  n_prompts = sum(len(p) for _, p in calls)
  # generated tokens, EOS included (`IdsTokenizer.decode` keeps every id)
  tokens = sum(len(reply.split()) for out in replies["static"] for reply in out)
  row = {
    "prompts": n_prompts,
    "lengths": args.lengths,
    "max_new_tokens": args.new,
    "slots": args.slots,
    "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
    "eos": eos,
    "load_avg_1m": round(os.getloadavg()[0], 1),
  }
  for mode, seconds in best.items():
    row[mode] = {
      "seconds": round(seconds, 2),
      "prompts_per_s": round(n_prompts / seconds, 2),
      "tokens_per_s": round(tokens / seconds, 1),
      "same_replies": replies[mode] == replies["static"],
    }
  row["steps_per_call"] = args.steps_per_call  # "engine": the first value
  for mode in modes:
    if mode != "static":
      row[f"speedup_{mode}"] = round(best["static"] / best[mode], 2)
  row["engine_stats"] = vars(llms["engine"].engine.stats)
  row["mean_new_tokens"] = round(tokens / n_prompts, 1)
  row["rows_ended_before_max_new_tokens"] = sum(
    len(reply.split()) < new for (new, _), out in zip(calls, replies["static"]) for reply in out
  )
  if lengths is not None:  # the replies are the drawn lengths (EOS included)
    got = [len(r.split()) for i in range(len(calls)) for r in replies["static"][i]]
    want = [n for i in range(len(calls)) for n in lengths[i :: len(calls)]]
    row["replies_are_drawn_lengths"] = got == want
    ends = [(i % len(args.new), n) for i, n in enumerate(lengths)]
    row["reply_lengths"] = {
      new: sorted(n for c, n in ends if c == i) for i, new in enumerate(args.new)
    }
  print(json.dumps(row))
  return row


if __name__ == "__main__":
  main()
