"""The real configs take their paths from the command line (issue 19, item 7): lnv7b's
datasets by name, its arg options, and the CoT configs' LLM sections."""

import pathlib
import subprocess
import sys

import pytest

from configs.distill import lnv7b

ROOT = pathlib.Path(__file__).resolve().parents[1]

PRINT = """
from absl import app, flags
from ml_collections import config_flags
C = config_flags.DEFINE_config_file("config")
def main(_):
  c = C.value
  print(repr({k: dict(v) for k, v in c.data.datasets.items()}) if "datasets" in c.data
        else "-")
  print(f"{c.student.hf_dir} {c.data.tokenizer}" if "student" in c else "-")
  if "program_llm" in c:
    print(c.program_llm.kind, dict(c.program_llm.kwargs))
app.run(main)
"""


def _python(*args, timeout: int = 300) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root, its output captured."""
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def _flags(*args):
  r = _python("-c", PRINT, *args, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.splitlines()


def test_lnv7b_datasets_and_options_from_the_command_line():
  lines = _flags(
    "--config=configs/distill/lnv7b.py:h100x8,hf_dir=/m/lnv,datasets=star+nextqa",
    "--config.data.datasets.star.annotations=/d/STAR_train.json",
    "--config.data.datasets.star.cots=/c/star/cot-*.array_record",
    "--config.data.datasets.nextqa.video_root=/d/NExTVideo",
  )
  datasets = eval(lines[0])  # pylint: disable=eval-used
  assert sorted(datasets) == ["nextqa", "star"]
  assert datasets["star"]["annotations"] == "/d/STAR_train.json"
  assert datasets["star"]["cots"] == "/c/star/cot-*.array_record"
  assert datasets["nextqa"]["video_root"] == "/d/NExTVideo"
  assert datasets["nextqa"]["annotations"] == "/data/nextqa/train.csv"
  assert lines[1] == "/m/lnv /m/lnv"


def test_lnv7b_defaults_are_the_official_recipe_and_bad_options_are_named():
  c = lnv7b.get_config("tpu_v5p_128,data=/bucket")
  assert c.data.datasets.clevrer.annotations == "/bucket/clevrer/train.json"
  # the folder CLEVRER's video_train.zip extracts to; no CoT config for it: QA only
  assert c.data.datasets.clevrer.video_root == "/bucket/clevrer/video_train"
  assert [c.data.datasets[n].cots for n in ("agqa", "activitynet_qa", "clevrer")] == ["", "", ""]
  assert c.data.datasets.star.cots == "/bucket/cots/star/cot-*.array_record"
  assert (c.data.mixing, c.loss.normalization) == ("concat_epoch", "sequence")
  assert (c.data.prompt_format, c.data.answer_style) == ("official", "letter")
  assert c.data.seq_len == 8192 and not c.data.allow_unfiltered_cots
  with pytest.raises(ValueError, match=r"datasets='star\+msrvtt': unknown \['msrvtt'\]"):
    lnv7b.get_config("h100x8,datasets=star+msrvtt")
  with pytest.raises(ValueError, match="option 'lr=1': expected key=value with key in"):
    lnv7b.get_config("h100x8,lr=1")


def test_cot_llm_sections_are_settable_from_the_command_line():
  lines = _flags(
    "--config=configs/toyworld/cot.py:programs=llm",
    "--config.program_llm.kind=local",
    "--config.program_llm.kwargs.model_dir=/models/coder",
  )
  kind, kwargs = lines[2].split(" ", 1)
  assert kind == "local" and eval(kwargs)["model_dir"] == "/models/coder"  # pylint: disable=eval-used


def test_make_llm_passes_only_the_set_kwargs():
  sys.path.insert(0, str(ROOT))
  from configs.toyworld import cot as toy
  from launch import generate_cots
  from aotd_jax.agent import llm

  section = toy.llm("openai", base_url="http://127.0.0.1:9/v1", model="m")
  assert set(section.kwargs) >= {"base_url", "model", "model_dir", "path", "api_key_env"}
  backend = generate_cots.make_llm(section)
  assert isinstance(backend, llm.OpenAIChat)
  section.kwargs.model_dir = "/models/x"
  with pytest.raises(ValueError, match=r"program LLM section \(kind 'openai'\).*model_dir"):
    generate_cots.make_llm(section, role="program")


def test_a_mistyped_checkpoint_stops_the_cot_job_before_its_manifest(tmp_path):
  """On the vendored NExT-QA annotations: one line naming every missing path, exit 2, and no
  manifest in out_dir (which would refuse the rerun with the path fixed)."""
  real = ROOT / "tests" / "fixtures" / "real" / "nextqa"
  (tmp_path / "videos").mkdir()
  out = tmp_path / "cots"
  arg = (
    f"ann={real / 'val.csv'},videos={tmp_path / 'videos'},map={real / 'map_vid_vidorID.json'},"
    f"owlv2={tmp_path / 'owlv2-typo'},univtg={tmp_path / 'u.ckpt'},clip={tmp_path / 'videos'},"
    f"llava={tmp_path / 'videos'},llm=http://127.0.0.1:9/v1,model=m,runlocal,out={out}"
  )
  (tmp_path / "u.ckpt").write_bytes(b"")
  r = _python("-m", "launch.generate_cots", f"--config=configs/cot/nextqa.py:{arg}")
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"not found: experts.detector.path={tmp_path / 'owlv2-typo'} (owlv2)." in r.stderr
  assert "Traceback" not in r.stderr and not (out / "manifest.json").exists()


def test_a_student_path_that_is_no_checkpoint_is_one_line(tmp_path):
  """launch.train with a mistyped `hf_dir`: exit 2 and one line naming the file."""
  r = _python(
    "-m",
    "launch.train",
    f"--config=configs/distill/lnv7b.py:h100x8,hf_dir={tmp_path / 'typo'},runlocal",
    f"--workdir={tmp_path / 'w'}",
  )
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"train: error: {tmp_path / 'typo' / 'config.json'}: no config.json" in r.stderr
  assert "Traceback" not in r.stderr


def test_videos_in_another_layout_stop_the_cot_job_before_its_manifest(tmp_path):
  """NExT-QA's videos flat in one folder instead of NExTVideo's <folder>/<video>.mp4: every
  question would fail at its video after the LLM wrote its program, and a rerun with the
  right folder would resume past those failed records. One line, exit 2, no manifest."""
  real = ROOT / "tests" / "fixtures" / "real" / "nextqa"
  flat = tmp_path / "videos"
  flat.mkdir()
  (flat / "4010069381.mp4").write_bytes(b"")  # the first question's video, in the wrong place
  (tmp_path / "owlv2").mkdir()
  (tmp_path / "u.ckpt").write_bytes(b"")
  out = tmp_path / "cots"
  arg = (
    f"ann={real / 'val.csv'},videos={flat},map={real / 'map_vid_vidorID.json'},"
    f"owlv2={tmp_path / 'owlv2'},univtg={tmp_path / 'u.ckpt'},clip={flat},llava={flat},"
    f"llm=http://127.0.0.1:9/v1,model=m,runlocal,out={out}"
  )
  r = _python("-m", "launch.generate_cots", f"--config=configs/cot/nextqa.py:{arg}")
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"data.video_dir={flat}: none of the first " in r.stderr
  assert f"(e.g. {flat / '1106' / '4010069381.mp4'})" in r.stderr
  assert "Traceback" not in r.stderr and not (out / "manifest.json").exists()
  # the CSV copied away from its map, no map=, the videos in NExTVideo's folders: the same
  # stop, naming map= as the fix (videos= was right)
  (flat / "1106").mkdir()
  (flat / "4010069381.mp4").rename(flat / "1106" / "4010069381.mp4")
  (tmp_path / "train.csv").write_bytes((real / "val.csv").read_bytes())
  arg = arg.replace(f"ann={real / 'val.csv'}", f"ann={tmp_path / 'train.csv'}")
  arg = arg.replace(f"map={real / 'map_vid_vidorID.json'},", "")
  r = _python("-m", "launch.generate_cots", f"--config=configs/cot/nextqa.py:{arg}")
  assert r.returncode == 2, r.stderr[-3000:]
  assert "give map= its map_vid_vidorID.json (there is none beside ann=" in r.stderr
  assert "Traceback" not in r.stderr and not (out / "manifest.json").exists()
  # the CSV given as map=: one line naming the file and the key
  arg = arg.replace(
    f"ann={tmp_path / 'train.csv'}", f"ann={tmp_path / 'train.csv'},map={tmp_path / 'train.csv'}"
  )
  r = _python("-m", "launch.generate_cots", f"--config=configs/cot/nextqa.py:{arg}")
  assert r.returncode == 2, r.stderr[-3000:]
  assert f"{tmp_path / 'train.csv'}: not valid JSON" in r.stderr and "the config's map=" in r.stderr
  assert "Traceback" not in r.stderr and not (out / "manifest.json").exists()


def test_cot_configs_cap_llava_batches_and_the_command_line_raises_them():
  """The CoT configs' LLaVA request buckets (a tuple: ml_collections overrides tuples from the
  command line, not lists) are the same in both LLaVA roles, which then share one backend; a
  user on a larger device raises them per role with `--config.experts.<role>.buckets=...`."""
  from absl import flags
  from ml_collections import config_flags

  from configs.common import LLAVA_BUCKETS

  arg = "ann=a.json,videos=v,classes=cls,owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1"
  argv = [
    "prog",
    f"--config={ROOT / 'configs' / 'cot' / 'star.py'}:{arg}",
    "--config.experts.video_qa.buckets=1,2,4,8,16",
    "--config.experts.action_recognizer.buckets=(1, 2, 4, 8, 16)",
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  e = values.config.experts
  assert e.video_qa.buckets == e.action_recognizer.buckets == (1, 2, 4, 8, 16)
  # without the overrides: the configs' own buckets, a tuple in both roles
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv[:2])
  values(argv[:2])
  e = values.config.experts
  assert e.video_qa.buckets == e.action_recognizer.buckets == LLAVA_BUCKETS
  assert isinstance(e.video_qa.buckets, tuple)


def test_cot_configs_detector_and_grounder_buckets_take_a_command_line_override():
  """The detector's and grounder's frame buckets are tuples too (ml_collections cannot override
  a list field from the command line: `--config.experts.detector.buckets=...` failed)."""
  from absl import flags
  from ml_collections import config_flags

  arg = "ann=a.json,videos=v,classes=cls,owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1"
  argv = [
    "prog",
    f"--config={ROOT / 'configs' / 'cot' / 'star.py'}:{arg}",
    "--config.experts.detector.buckets=8,32",
    "--config.experts.grounder.buckets=(1, 16)",
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  assert values.config.experts.detector.buckets == (8, 32)
  assert values.config.experts.grounder.buckets == (1, 16)


def test_cot_configs_run_llava_in_bf16_and_the_command_line_sets_float32():
  """The CoT configs load LLaVA in bf16 (a float32 7B leaves an 80 GB H100 no room for a
  request); a user sets float32 per role from the command line."""
  from absl import flags
  from ml_collections import config_flags

  arg = "ann=a.json,videos=v,classes=cls,owlv2=o,univtg=u.ckpt,clip=c,llava=l,llm=http://x/v1"
  argv = ["prog", f"--config={ROOT / 'configs' / 'cot' / 'star.py'}:{arg}"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  e = values.config.experts
  assert e.video_qa.dtype == e.action_recognizer.dtype == "bfloat16"
  argv += [
    "--config.experts.video_qa.dtype=float32",
    "--config.experts.action_recognizer.dtype=float32",
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  assert values.config.experts.video_qa.dtype == values.config.experts.action_recognizer.dtype
  assert values.config.experts.video_qa.dtype == "float32"
