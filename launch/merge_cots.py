r"""Merges a CoT run's shards into one dataset (after every worker of `generate_cots` finished).

  python -m launch.merge_cots --cot_dir=/tmp/cots [--out_dir=/tmp/cots/merged]

Writes `records.jsonl` (every question, in the dataset's order: what an unsharded run writes),
`cot.array_record` (the kept CoTs: train on it with `data.datasets.<name>.cots=OUT/cot.array_record`),
`stats.json` and `manifest.json` into `--out_dir` (default `--cot_dir/merged`). Either may be a
`gs://` path. Stops with an error naming the shard when the shards are not one whole run.
"""

from __future__ import annotations

from absl import flags

from aotd_jax.agent import job, merge
from aotd_jax.train.config_check import ConfigError
from launch import cli

_COT_DIR = flags.DEFINE_string(
  "cot_dir", None, "The CoT job's out_dir (holds records-*-of-*.jsonl)."
)
_OUT_DIR = flags.DEFINE_string(
  "out_dir", "", "Where the merged dataset goes (default: COT_DIR/merged)."
)
flags.mark_flags_as_required(["cot_dir"])


def main(argv):
  del argv
  try:
    stats = merge.merge(_COT_DIR.value, _OUT_DIR.value)
  except job.JobError as e:  # the shards are not one whole run: one line naming the shard
    raise ConfigError(str(e)) from None
  out = _OUT_DIR.value or _COT_DIR.value.rstrip("/") + "/merged"
  print(f"merged {stats.total} records ({stats.summary()}) -> {out}")


if __name__ == "__main__":
  cli.run(main)
