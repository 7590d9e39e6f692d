r"""The whole CoT job's questions/s, pipelined stages vs one batch at a time, same questions.

Everything `CotJob.run` does per question is in the loop: each question's clip decoded from
its mp4 (the toy world's rendered videos), its program run in the sandbox against the toy
world's oracle experts, the LLM stages (program, CoT rewrite, logic judge), the filter and the
fsync'd record log. Two LLM setups:

  stub:  program, rewrite and judge served over HTTP (`OpenAIChat`, `--concurrency` requests
         in flight) by a local OpenAI-compatible stub (`aotd_jax.rehearsal.stub_server`)
         that answers after a fixed `--latency_ms`: each program prompt gets the question's
         gold toy-world program, so every program runs. The overlap of LLM waits with
         decoding and execution is what this row measures.
  local: our Flax Llama (`LocalLlama`, tiny random weights, a toy BPE tokenizer) rewrites
         and judges on this machine's CPU; programs are the annotations' gold ones (a random
         model writes no program that runs). The LLM's compute competes for the same cores.
         One row per `--local_batching` (continuous: the engine, which the rewrite and judge
         stages share when pipelined; static: `generate` batches, the stages taking turns).
         `--local_replies mixed` draws each reply's length from its prompt (a random model's
         own replies run to max_new_tokens: rows of equal lengths); `--local_hidden` and
         `--local_layers` size the model (default: the toy world's tiny Llama).

Per mode: questions/s, busy seconds per stage (`CotJob.times`: the wall time each stage's
work took, summed over batches; in the pipelined run they overlap), the seconds spent decoding
clips and inside the experts (the trace's tool times), each summed over the threads doing it
(so they can exceed the execute stage's wall time), and whether both modes wrote the same
records. The sequential run's `other_s` is its wall time outside the stages (record log
appends and fsyncs, progress).
Each mode runs once untimed (sandbox start, compilation), then the modes alternate for
`--rounds` and the best of each is kept (the box is shared).

  python benchmarks/cot_pipeline.py                    # RESULTS.md's row
  python benchmarks/cot_pipeline.py --clips 4 --rounds 1 --skip_local   # a smoke run
  python benchmarks/cot_pipeline.py --clips 32 --skip_stub --local_batching continuous static
  python benchmarks/cot_pipeline.py --clips 16 --rounds 1 --skip_stub --local_batching \
    continuous static --local_replies mixed --local_hidden 256 --local_layers 4 \
    --batch_size 16 --local_max_batch 8 --llm_workers 2   # as the real configs: calls of
    # more prompts than the model's rows, two batches per LLM stage at once
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def slow_replies(gold_programs: dict[str, str], latency_s: float):
  """The stub's replies after `latency_s`, each program prompt answered with its question's
  gold program."""
  from aotd_jax.rehearsal import stub_server

  class Replies(stub_server.Replies):
    def reply(self, text: str) -> str:
      time.sleep(latency_s)
      if stub_server.classify(text) == "program":
        question = text.rsplit("\nQuestion: ", 1)[-1].split("\n", 1)[0].strip()
        if question in gold_programs:
          with self._lock:
            self.counts["program"] = self.counts.get("program", 0) + 1
          return "```python\n" + gold_programs[question].strip() + "\n```"
      return super().reply(text)

  return Replies()


class TimedArgs:
  """`make_args` that adds its seconds (the clip's decode) to `seconds`, from any thread."""

  def __init__(self, make_args):
    self.make_args, self.seconds = make_args, 0.0
    self._lock = threading.Lock()

  def __call__(self, qa):
    t0 = time.perf_counter()
    try:
      return self.make_args(qa)
    finally:
      with self._lock:
        self.seconds += time.perf_counter() - t0


def tiny_local_llm(
  texts,
  out_dir: str,
  max_batch: int,
  batching: str = "continuous",
  replies: str = "free",
  hidden: int = 0,
  layers: int = 0,
):
  """`LocalLlama` on a tiny random Llama and a toy BPE tokenizer trained on `texts`.

  replies="mixed": each reply's length is drawn by its prompt (a log-normal of median 96
  tokens, sigma 0.6, `benchmarks.llm_engine.countdown_model`); "free": the random model's
  own tokens (its replies run to max_new_tokens). `hidden`/`layers`: another size (0: the
  toy world's tiny Llama's)."""
  from flax import nnx

  from aotd_jax.agent.llm import LocalLlama
  from aotd_jax.data.toy_tokenizer import train_tokenizer
  from aotd_jax.models.llama import LlamaConfig, LlamaForCausalLM
  from aotd_jax.projects.toyworld.tiny_models import TINY_LLAMA
  from benchmarks.llm_engine import countdown_model

  tok = train_tokenizer(texts, out_dir, vocab_size=TINY_LLAMA["vocab_size"])
  fields = {k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")}
  fields["max_position_embeddings"] = 8192
  if hidden:
    fields.update(hidden_size=hidden, intermediate_size=hidden * 8 // 3)
  if layers:
    fields["num_hidden_layers"] = layers
  model = LlamaForCausalLM(LlamaConfig(**fields), rngs=nnx.Rngs(0))
  if replies == "mixed":
    start = 8  # past the special tokens; the countdown spans the rest of the vocabulary
    size = fields["vocab_size"] - start
    model = countdown_model(model, start, size, tok.eos_token_id, from_prompt=(96, 0.6))
  return LocalLlama(model=model, tokenizer=tok, max_batch=max_batch, batching=batching)


def run_mode(make_job, questions, pipelined: bool, out_dir: str) -> dict:
  from aotd_jax.agent import job
  from aotd_jax.agent.stages import StageTimes

  cot_job, timed_args = make_job(pipelined)
  cot_job.times = StageTimes()
  paths = job.JobPaths.for_shard(out_dir, "00000-of-00001")
  t0 = time.perf_counter()
  with open(os.devnull, "w") as quiet:
    stats = cot_job.run(questions, paths, stream=quiet)
  seconds = time.perf_counter() - t0
  records = job.RecordLog(paths.records).load()
  tool_s = sum(sum(r["timing"]["tool_seconds"]) for r in records)
  for r in records:
    r.pop("timing")
  busy = cot_job.times.busy_s
  other = {} if pipelined else {"other_s": round(seconds - sum(busy.values()), 3)}
  return {
    "seconds": seconds,
    "questions_per_s": len(questions) / seconds,
    "stage_busy_s": {k: round(v, 3) for k, v in busy.items()},
    **other,
    "decode_thread_s": round(timed_args.seconds, 3),
    "experts_thread_s": round(tool_s, 3),
    "executed": stats.executed,
    "kept": stats.kept,
    "records": records,
  }


def compare(name: str, make_job, questions, rounds: int, tmp: str, records=None) -> dict:
  """Warms each mode once, alternates them `rounds` times; the best of each. The sequential
  run's records are appended to `records` when given."""
  best: dict[str, dict] = {}
  for r in range(rounds + 1):
    for mode in ("sequential", "pipelined"):
      out = run_mode(
        make_job,
        questions,
        mode == "pipelined",
        tempfile.mkdtemp(dir=tmp, prefix=f"{name}-{mode}-{r}-"),
      )
      if r and (mode not in best or out["seconds"] < best[mode]["seconds"]):
        best[mode] = out
  seq, pipe = best["sequential"], best["pipelined"]
  if records is not None:
    records.append(seq["records"])
  row = {
    "setup": name,
    "questions": len(questions),
    "same_records": seq.pop("records") == pipe.pop("records"),
    "speedup": round(seq["seconds"] / pipe["seconds"], 2),
  }
  for mode, out in (("sequential", seq), ("pipelined", pipe)):
    out["seconds"] = round(out["seconds"], 2)
    out["questions_per_s"] = round(out["questions_per_s"], 2)
    row[mode] = out
  return row


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--clips", type=int, default=16, help="toy-world clips (train split)")
  ap.add_argument("--size", type=int, default=128, help="toy-world frame size (pixels)")
  ap.add_argument("--max_frames", type=int, default=16, help="frames decoded per question")
  ap.add_argument("--latency_ms", type=float, default=200.0, help="the stub LLM's latency")
  ap.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight per role")
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--workers", type=int, default=2, help="sandbox workers (program threads)")
  ap.add_argument("--decode_workers", type=int, default=2)
  ap.add_argument("--max_batches_in_flight", type=int, default=4)
  ap.add_argument("--llm_workers", type=int, default=1, help="batches per LLM stage at once")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--skip_local", action="store_true", help="no local Flax LLM row")
  ap.add_argument("--skip_stub", action="store_true", help="no HTTP stub row")
  ap.add_argument(
    "--local_batching",
    nargs="+",
    default=["continuous"],
    choices=["continuous", "static"],
    help="LocalLlama's batching for the local row(s): one row each",
  )
  ap.add_argument(
    "--local_replies",
    default="free",
    choices=["free", "mixed"],
    help="the local LLM's reply lengths: the random model's own (free: to max_new_tokens) or"
    " drawn per prompt (mixed: log-normal, median 96 tokens)",
  )
  ap.add_argument("--local_max_batch", type=int, default=0, help="local LLM rows (0: --batch_size)")
  ap.add_argument("--local_hidden", type=int, default=0, help="local Llama width (0: tiny, 32)")
  ap.add_argument("--local_layers", type=int, default=0, help="local Llama layers (0: tiny, 2)")
  args = ap.parse_args(argv)

  import experts
  from aotd_jax.agent import job
  from aotd_jax.agent.llm import OpenAIChat
  from aotd_jax.agent.sandbox import Sandbox
  from aotd_jax.data import annotations
  from aotd_jax.projects.toyworld import prompts as toy_prompts
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.rehearsal.stub_server import StubServer
  from configs.toyworld import cot as toy
  from launch import generate_cots

  tmp = tempfile.mkdtemp(prefix="cot_pipeline_")
  world = os.path.join(tmp, "world")
  num_clips = max(10, args.clips * 10 // 8)  # 80% of the clips are the train split
  paths = toyworld.generate_world(world, seed=0, num_clips=num_clips, size=args.size)
  config = toy.get_config(f"world={world},split=train")
  config.max_frames = args.max_frames
  questions = list(annotations.read("star", paths["train"]))
  gold = {}
  for qa in questions:
    gold.setdefault(qa.question, qa.meta["question_program"])
  tools = experts.make_tools(config.experts, plugins=generate_cots.PLUGINS)
  examples = toy_prompts.few_shot_examples()
  result = {
    "questions": len(questions),
    "clips": num_clips,
    "size": args.size,
    "max_frames": args.max_frames,
    "batch_size": args.batch_size,
    "sandbox_workers": args.workers,
    "latency_ms": args.latency_ms,
    "decode_workers": args.decode_workers,
    "llm_workers": args.llm_workers,
    "max_batches_in_flight": args.max_batches_in_flight,
    "load_avg_1m": round(os.getloadavg()[0], 1),
    "local_replies": args.local_replies,
    "local_size": [args.local_hidden or 32, args.local_layers or 2],
    "local_max_batch": args.local_max_batch or args.batch_size,
    "rows": [],
  }

  with Sandbox(num_workers=args.workers) as sb:

    def job_factory(**llms):
      def make(pipelined: bool):
        timed_args = TimedArgs(generate_cots.clip_args(config))
        cot_job = job.CotJob(
          tools=tools,
          make_args=timed_args,
          run_program=sb.run,
          examples=examples,
          batch_size=args.batch_size,
          num_threads=args.workers,
          timeout_s=30.0,
          video_path=generate_cots.video_path(config),
          pipeline=pipelined,
          decode_workers=args.decode_workers,
          max_batches_in_flight=args.max_batches_in_flight,
          llm_workers=args.llm_workers,
          **llms,
        )
        return cot_job, timed_args

      return make

    if not args.skip_stub:
      replies = slow_replies(gold, args.latency_ms / 1e3)
      with StubServer(replies) as server:

        def http():
          return OpenAIChat(server.url, "stub-coder", concurrency=args.concurrency, timeout_s=60)

        stub_job = job_factory(
          program_llm=http(),
          cot_llm=http(),
          judge_llm=http(),
          program_source="llm",
          logic_judge="llm",
        )
        row = compare("stub", stub_job, questions, args.rounds, tmp)
      row["stub_requests"] = dict(sorted(replies.counts.items()))
      result["rows"].append(row)
      print(json.dumps(row), flush=True)

    if not args.skip_local:
      texts = [qa.question for qa in questions] + list(gold.values())
      local_records: list = []
      for batching in args.local_batching:
        local = tiny_local_llm(
          texts,
          os.path.join(tmp, "tokenizer"),
          args.local_max_batch or args.batch_size,
          batching,
          args.local_replies,
          args.local_hidden,
          args.local_layers,
        )
        local_job = job_factory(
          cot_llm=local, judge_llm=local, program_source="gold", logic_judge="llm"
        )
        row = compare(f"local-{batching}", local_job, questions, args.rounds, tmp, local_records)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
      # the same records whichever batching the local model uses (greedy)
      result["same_records_across_local_batching"] = all(
        r == local_records[0] for r in local_records
      )
  result["load_avg_1m_end"] = round(os.getloadavg()[0], 1)
  print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
  return result


if __name__ == "__main__":
  main()
