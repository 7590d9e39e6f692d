"""Expert backends: bucketed jit, the OWLv2 detector against transformers, oracles, registry."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experts
from aotd_jax.projects.toyworld.oracle import PLUGIN as TOYWORLD
from experts import registry
from experts.backends import oracle
from experts.batching import BucketedJit, count_xla_compilations, plan_chunks

STAR_CLASSES = pathlib.Path(__file__).parent / "fixtures" / "real" / "star_classes"


# -- bucketed jit ------------------------------------------------------------------------------


def test_plan_chunks_cover_rows_with_bucket_sizes():
  buckets = (1, 2, 4, 8)
  assert plan_chunks(8, buckets) == [(0, 8, 8)]
  assert plan_chunks(13, buckets) == [(0, 8, 8), (8, 13, 8)]
  assert plan_chunks(3, buckets) == [(0, 3, 4)]
  assert plan_chunks(0, buckets) == []


def test_bucketed_jit_compiles_at_most_once_per_bucket_over_100_clips():
  weight = jnp.arange(12.0).reshape(3, 4)
  fn = BucketedJit(
    lambda x, w: jnp.tanh(x.astype(jnp.float32).mean((1, 2)) @ w), buckets=(1, 2, 4, 8, 16, 32)
  )
  rng = np.random.default_rng(0)
  with count_xla_compilations() as xla:
    for _ in range(100):
      n = int(rng.integers(1, 70))
      frames = rng.integers(0, 255, (n, 6, 6, 3), dtype=np.uint8)
      out = fn(frames, weight)
      want = np.tanh(frames.astype(np.float32).mean((1, 2)) @ np.asarray(weight))
      np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
  assert fn.compiles <= 6, fn.compiles
  assert xla[0] >= fn.compiles  # the monitoring counter sees the same compilations (and more)


def test_bucketed_jit_names_its_programs_after_the_expert():
  from experts.batching import program_name

  assert program_name("owlv2:/ckpt/owl-v2 b16/image") == "bucketed_owlv2_ckpt_owl_v2_b16_image"
  names = []

  def listener(event, duration, **kwargs):
    names.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    BucketedJit(lambda x: x * 2, buckets=(3,), name="llava/prefix")(np.ones((3, 5), np.float32))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert "jit(bucketed_llava_prefix)" in names


def test_bucketed_jit_handles_device_rows_and_empty_input():
  fn = BucketedJit(lambda x: {"s": x.sum(-1)}, buckets=(2, 4))
  x = jnp.arange(15.0).reshape(5, 3)
  np.testing.assert_allclose(np.asarray(fn(x)["s"]), np.asarray(x.sum(-1)))
  assert fn(jnp.zeros((0, 3)))["s"].shape == (0,)


@pytest.mark.parametrize("buckets", [(), (0, 2), (1.5,)])
def test_bucketed_jit_rejects_bad_buckets(buckets):
  with pytest.raises(ValueError, match="buckets must be positive integers"):
    BucketedJit(lambda x: x, buckets=buckets)


# -- OWLv2 detector vs transformers -------------------------------------------------------------

V = 99


def toy_tokenize(texts):
  """Word-hash ids with BOS/EOS, right-padded to 16 as OWLv2's processor pads."""
  ids = np.zeros((len(texts), 16), np.int32)
  mask = np.zeros_like(ids)
  for i, t in enumerate(texts):
    toks = [V - 2] + [3 + sum(map(ord, w)) % (V - 6) for w in t.split()] + [V - 1]
    ids[i, : len(toks)], mask[i, : len(toks)] = toks, 1
  return ids, mask


@pytest.fixture(scope="module")
def owl(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("aotd_jax.models.owlv2")
  from aotd_jax import hf

  cfg = transformers.Owlv2Config(
    text_config=dict(
      vocab_size=V,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      max_position_embeddings=16,
      eos_token_id=V - 1,
      bos_token_id=V - 2,
      pad_token_id=0,
    ),
    vision_config=dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=32,
      patch_size=8,
    ),
    projection_dim=32,
  )
  torch.manual_seed(0)
  reference = transformers.Owlv2ForObjectDetection(cfg).eval()
  path = tmp_path_factory.mktemp("owl")
  reference.save_pretrained(path)
  return reference, hf.from_pretrained(str(path)), str(path)


def test_owlv2_query_template_embeds_the_official_prompt(owl):
  """ "a photo of a {}" (the official AoTD's queries) is what the text tower reads; boxes keep
  the bare name; the embeddings equal embedding the templated text directly."""
  from experts.backends.owlv2 import Owlv2Detector

  _, model, _ = owl
  seen = []

  def recording(texts):
    seen.extend(texts)
    return toy_tokenize(texts)

  det = Owlv2Detector(model, recording, query_template="a photo of a {}", buckets=(1, 2, 4))
  plain = Owlv2Detector(model, toy_tokenize, buckets=(1, 2, 4))
  emb, _ = det.embed_queries(["cup"])
  assert seen == ["a photo of a cup"]
  np.testing.assert_allclose(emb, plain.embed_queries(["a photo of a cup"])[0], atol=1e-6)
  frames = np.random.default_rng(1).integers(0, 255, (2, 20, 28, 3), dtype=np.uint8)
  boxes = det.detect(experts.VideoClip(frames, video_id="v"), ["cup"], threshold=0.0)
  assert boxes[0] and {b.label for b in boxes[0]} == {"cup"}
  with pytest.raises(ValueError, match="must contain"):
    Owlv2Detector(model, toy_tokenize, query_template="a photo")


def test_owlv2_detector_matches_transformers_pipeline(owl):
  import torch
  from transformers import Owlv2ImageProcessorPil
  from experts.backends.owlv2 import Owlv2Detector

  reference, model, _ = owl
  det = Owlv2Detector(model, toy_tokenize, nms_threshold=None, buckets=(1, 2, 4, 8))
  frames = np.random.default_rng(0).integers(0, 255, (5, 20, 28, 3), dtype=np.uint8)
  clip = experts.VideoClip(frames, video_id="v", start_frame=100)
  queries = ["red circle", "cup"]
  ours = det.detect(clip, queries, threshold=0.0)
  proc = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})
  ids, mask = toy_tokenize(queries)
  with torch.no_grad():
    out = reference(
      input_ids=torch.tensor(np.tile(ids, (5, 1))).long(),
      attention_mask=torch.tensor(np.tile(mask, (5, 1))),
      pixel_values=proc(images=list(frames), return_tensors="pt")["pixel_values"],
    )
  logits, boxes = det.raw_outputs(clip, queries)
  np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(boxes), out.pred_boxes.numpy(), atol=1e-4)
  want = proc.post_process_object_detection(out, threshold=0.0, target_sizes=[(20, 28)] * 5)
  for i, (got, ref) in enumerate(zip(ours, want)):
    assert [b.frame_id for b in got] == [100 + i] * len(ref["boxes"])
    assert [b.label for b in got] == [queries[int(l)] for l in ref["labels"]]
    np.testing.assert_allclose(
      [b.box for b in got], np.clip(ref["boxes"].numpy(), 0, [28, 20, 28, 20]), atol=1e-3
    )
    np.testing.assert_allclose([b.score for b in got], ref["scores"].numpy(), atol=1e-4)


@pytest.mark.parametrize("hw", [(20, 28), (24, 32), (32, 32)])
def test_owlv2_device_preprocess_matches_transformers(hw):
  """Padded to a square, then resized to 32 px: (24, 32) and (32, 32) pad to the model's
  size, where the resize is skipped (an identity matrix)."""
  from transformers import Owlv2ImageProcessorPil

  from aotd_jax.models import owlv2_processing as proc
  from experts.backends.owlv2 import device_preprocess

  frames = np.random.default_rng(3).integers(0, 255, (3, *hw, 3), dtype=np.uint8)
  ours = device_preprocess(frames, 32, mean=proc.OPENAI_CLIP_MEAN, std=proc.OPENAI_CLIP_STD)
  ref = Owlv2ImageProcessorPil(size={"height": 32, "width": 32})(
    images=list(frames), return_tensors="np"
  )["pixel_values"]
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)


def test_owlv2_detector_compiles_once_per_bucket_through_the_tools(owl):
  from experts.backends.owlv2 import Owlv2Detector

  _, model, _ = owl
  det = Owlv2Detector(model, toy_tokenize, buckets=(4, 8))
  box = experts.Toolbox(detector=det, detect_threshold=0.0)
  rng = np.random.default_rng(1)
  for i in range(5):
    n = int(rng.integers(1, 19))
    clip = experts.VideoClip(rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), video_id=f"v{i}")
    box.Count(clip, ["cup", "dog", "ball"][i % 3])
    box.Query_Objs(clip, "cup/mug")  # two query names: masked up to a power of two
  assert det.image_fn.compiles <= 2  # one per bucket
  assert det.head_fn.compiles <= 2 * 2  # (bucket) x (1 or 2 padded queries)
  # Query_Objs ran no image tower: every chunk Count computed was served from the device
  assert det.feature_hits == det.image_fn.calls > 0


# -- oracle on STAR-format annotations ---------------------------------------------------------


def star_records():
  return [
    {
      "question_id": "Interaction_T1_13",
      "video_id": "6H78U",
      "situations": {
        "000199": {
          "rel_pairs": [],
          "rel_labels": [],
          "actions": ["a077"],
          "bbox": [[10.0, 20.0, 50.0, 90.0], [5.0, 5.0, 9.0, 9.0]],
          "bbox_labels": ["o000", "o023"],
        },
        "000210": {
          "actions": ["a077", "a001"],
          "bbox": [[11.0, 21.0, 51.0, 91.0]],
          "bbox_labels": ["o000"],
        },
      },
    }
  ]


def test_oracle_reads_star_situations_with_class_names(tmp_path):
  path = tmp_path / "star.json"
  path.write_text(json.dumps(star_records()))
  gt = oracle.GroundTruth.from_star(str(path), str(STAR_CLASSES))
  names = oracle.read_class_names(str(STAR_CLASSES))
  frames = np.zeros((20, 8, 8, 3), np.uint8)
  clip = experts.VideoClip(frames, start_frame=195, video_id="6H78U")
  box = experts.Toolbox(
    detector=oracle.OracleDetector(gt),
    grounder=oracle.OracleGrounder(gt),
    action_recognizer=oracle.OracleActions(gt),
  )
  person = box.Find(clip, "person")
  assert len(person) == 20  # every frame takes its nearest annotated key frame
  assert person.detections[0].box == (10.0, 20.0, 50.0, 90.0)
  assert box.exist(clip, names["o023"].split("/")[0])
  acts = box.Query_Actions(clip)
  assert acts == [names["a077"], names["a001"]]
  window = box.Filter_frames_with_act(clip, names["a001"])
  assert window.start_frame >= 205  # frames nearer 000210 than 000199
  with pytest.raises(KeyError, match="no ground truth for video 'other'"):
    box.Find(experts.VideoClip(frames, video_id="other"), "person")


def test_oracle_reports_malformed_star_records(tmp_path):
  bad = star_records()
  bad[0]["situations"]["000199"]["bbox_labels"] = ["o000"]
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError, match=r"bad.json: record 'Interaction_T1_13' has malformed"):
    oracle.GroundTruth.from_star(str(path))
  path.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json: not valid JSON"):
    oracle.GroundTruth.from_star(str(path))
  with pytest.raises(FileNotFoundError, match="object_classes.txt"):
    oracle.read_class_names(str(tmp_path))


@pytest.mark.parametrize(
  "a,b", [("jumps", "jumping"), ("spun", "spins"), ("moved", "move"), ("touches", "touched")]
)
def test_oracle_stems_verb_forms(a, b):
  assert oracle.stem(a) == oracle.stem(b)
  assert oracle.match_score(f"the red circle {a}", f"red circle {b} the blue square") == 1.0


# -- registry ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
  from aotd_jax.projects.toyworld import world as toyworld

  out = tmp_path_factory.mktemp("world")
  toyworld.generate_world(out, seed=0, num_clips=10, write_videos=False)
  return out


def test_make_tools_from_default_config_runs_a_gold_program(toy_world):
  from aotd_jax.projects.toyworld import world as toyworld

  config = registry.default_config()
  config.ground_truth.path = str(toy_world)
  tools = experts.make_tools(config, plugins=[TOYWORLD])
  assert list(tools) == list(experts.TOOL_NAMES)
  record = json.loads((toy_world / "train.json").read_text())[0]
  frames, truth, _ = toyworld.generate_clip(0, "train", 0)
  assert truth.video_id == record["video_id"]
  scope = dict(tools)
  exec(record["question_program"], scope)
  clip = experts.VideoClip(frames, fps=truth.fps, video_id=truth.video_id)
  answer = scope["execute_command"](
    clip, record["question"], [c["choice"] for c in record["choices"]]
  )
  assert answer in [c["choice"] for c in record["choices"]]
  assert tools["trim"].__self__.records  # the program's calls were recorded


def test_gold_programs_with_perfect_experts_answer_correctly(toy_world):
  """The toy world's gold programs through the tools with oracle experts and the keyword
  selector (no model): the tool semantics carry the answer."""
  from aotd_jax.projects.toyworld import world as toyworld

  config = registry.default_config()
  config.ground_truth.path = str(toy_world)
  tools = experts.make_tools(config, plugins=[TOYWORLD])
  wrong, total = [], 0
  for split in ("train", "val", "test"):
    for record in json.loads((toy_world / f"{split}.json").read_text()):
      index = int(record["video_id"].rsplit("_", 1)[1])
      frames, truth, _ = toyworld.generate_clip(0, split, index)
      scope = dict(tools)
      exec(record["question_program"], scope)
      clip = experts.VideoClip(frames, fps=truth.fps, video_id=truth.video_id)
      answer = scope["execute_command"](
        clip, record["question"], [c["choice"] for c in record["choices"]]
      )
      if answer != record["answer"]:
        wrong.append((record["video_id"], record["question"], answer, record["answer"]))
      total += 1
  # oracle experts answer every gold program (29 questions in this world): exact, not a rate
  assert total == 29 and wrong == [], wrong


def test_registry_swaps_a_backend_by_config_without_code(toy_world):
  class Fixed:
    name = "fixed"

    def select(self, question, choices, info):
      return choices[-1]

  config = registry.default_config()
  config.ground_truth.path = str(toy_world)
  config.selector.kind = "fixed"
  config.detector.kind = "none"
  tools = experts.make_tools(
    config, factories={"selector": {"fixed": lambda sec, ctx: Fixed()}}, plugins=[TOYWORLD]
  )
  assert tools["select_answer"]("q", ["a", "b"], {}) == "b"
  with pytest.raises(RuntimeError, match="config.detector"):
    tools["Find"](experts.VideoClip(np.zeros((1, 4, 4, 3), np.uint8)), "cup")


def test_registry_binds_owlv2_by_path(owl, monkeypatch):
  from aotd_jax import hf

  _, _, path = owl
  monkeypatch.setattr(hf, "load_tokenizer", lambda p: None)  # no tokenizer files in a tiny dir
  from experts.backends import owlv2 as owl_backend

  monkeypatch.setattr(owl_backend, "hf_tokenize", lambda tok, n: toy_tokenize)
  config = registry.default_config()
  # threshold 0 and no NMS: every patch's box counts, (32 / 8) ** 2 = 16 in each frame
  config.detector = {
    "kind": "owlv2",
    "path": path,
    "threshold": 0.0,
    "buckets": [1, 4],
    "nms_threshold": 0,
  }
  config.grounder.kind = config.action_recognizer.kind = config.video_qa.kind = "none"
  box = experts.make_toolbox(config, plugins=[TOYWORLD])
  assert box.detector.name == f"owlv2:{path}"
  clip = experts.VideoClip(np.full((3, 12, 12, 3), 128, np.uint8), video_id="v")
  assert box.Count(clip, "cup") == 16
  assert box.detector.options.matmul_precision == "default"
  config.detector.matmul_precision = "high"
  box = experts.make_toolbox(config, plugins=[TOYWORLD])
  assert box.detector.options.matmul_precision == "high"
  count = box.Count(clip, "cup")
  assert count == 16
  assert box.detector.options.cpu_kernels
  config.detector.cpu_kernels = False  # XLA's attention instead of the CPU kernel: same counts
  assert box.detector.feature_cache.max_bytes == 8192 << 20  # the default
  config.detector.feature_cache_mb = 0.5
  box = experts.make_toolbox(config, plugins=[TOYWORLD])
  assert not box.detector.options.cpu_kernels
  assert box.detector.feature_cache.max_bytes == 1 << 19
  assert box.Count(clip, "cup") == count
  config.detector.feature_cache_mb = 0
  with pytest.raises(ValueError, match="feature_cache_mb must be > 0, got 0"):
    experts.make_toolbox(config, plugins=[TOYWORLD])


@pytest.mark.parametrize(
  "edit,msg",
  [
    ({"detector": {"kind": "yolo"}}, r"detector.kind='yolo' is not one of"),
    ({"detector": {"kind": "owlv2", "path": ""}}, r"detector.path is required for kind 'owlv2'"),
    ({"selector": {"kind": "llama", "path": ""}}, r"selector.path is required for kind 'llama'"),
    ({"ground_truth": {"kind": "toyworld", "path": ""}}, r"needs ground_truth.path"),
    ({"ground_truth": {"kind": "kinetics", "path": "x"}}, r"ground_truth.kind='kinetics'"),
    ({"object_vocabulary": "coco"}, r"object_vocabulary='coco'"),
  ],
)
def test_registry_reports_bad_config(toy_world, edit, msg):
  config = registry.default_config().to_dict()
  config["ground_truth"]["path"] = str(toy_world)
  for k, v in edit.items():
    config[k] = v
  with pytest.raises((ValueError, KeyError), match=msg):
    experts.make_tools(config, plugins=[TOYWORLD])


# -- LLM answer selector -------------------------------------------------------------------------


def test_llm_selector_prompts_with_evidence_and_snaps_the_reply():
  from experts.backends.llm import LLMSelector

  class FakeLLM:
    def __init__(self, reply):
      self.reply, self.prompts = reply, []

    def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
      self.prompts += prompts
      return [self.reply] * len(prompts)

  llm = FakeLLM("(B)")
  box = experts.Toolbox(selector=LLMSelector(llm))
  choices = ["The red circle jumped.", "The blue square spun."]
  assert (
    box.select_answer("What happened?", choices, {"actions": ["blue square spins"]}) == choices[1]
  )
  text = llm.prompts[0][0]["content"]
  assert "(A) The red circle jumped." in text and "- actions: blue square spins" in text
  llm.reply = "the red circle jumped i think"
  assert box.select_answer("Other?", choices, {}) == choices[0]


def tiny_llama_dir(path):
  """A tiny random Llama (transformers' own classes and `save_pretrained`) with a word-level
  tokenizer that has no chat template; returns (dir, tokenizer)."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  from fixtures.tiny_tokenizer import make_tokenizer

  tok = make_tokenizer(["We want to answer a question about a video"])
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=len(tok),
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
    bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id,
  )
  transformers.LlamaForCausalLM(config).save_pretrained(str(path))
  tok.save_pretrained(str(path))
  return str(path), tok


def test_llama_selector_without_a_chat_template_fails_when_the_tools_are_built(tmp_path):
  """select_answer sends a chat message: a local selector whose tokenizer has no chat template
  is refused when the tools are built, naming the directory and the ways out, instead of
  failing every program in the records (issue 19, item 8)."""
  from fixtures.tiny_tokenizer import PLAIN_TEMPLATE

  path, tok = tiny_llama_dir(tmp_path / "llama")
  config = registry.default_config()
  for role in ("detector", "grounder", "action_recognizer", "video_qa"):
    config[role].kind = "none"
  config.selector = experts.selector_section("llama", path=path)
  with pytest.raises(
    ValueError,
    match=r"selector.kind='llama' at '.*llama': its tokenizer has "
    r"no chat template.*selector.chat=False",
  ):
    experts.make_tools(config, plugins=[TOYWORLD])
  config.selector.chat = False  # asked for: plain-text prompts
  assert experts.make_toolbox(config, plugins=[TOYWORLD]).selector.chat is False
  tok.chat_template = PLAIN_TEMPLATE
  tok.save_pretrained(path)
  config.selector.chat = True
  selector = experts.make_toolbox(config, plugins=[TOYWORLD]).selector
  assert selector.chat and selector.llm.tokenizer.chat_template == PLAIN_TEMPLATE


# -- UniVTG grounder -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def univtg_parts():
  pytest.importorskip("aotd_jax.models.univtg")
  from flax import nnx
  from aotd_jax.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
  from aotd_jax.models.univtg import UniVTG, UniVTGConfig

  clip_cfg = CLIPConfig(
    text_config=CLIPTextConfig(
      vocab_size=V,
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      max_position_embeddings=16,
      eos_token_id=V - 1,
      bos_token_id=V - 2,
      pad_token_id=0,
    ),
    vision_config=CLIPVisionConfig(
      hidden_size=16,
      intermediate_size=32,
      num_hidden_layers=1,
      num_attention_heads=2,
      image_size=32,
      patch_size=16,
    ),
    projection_dim=12,
  )
  clip_model = CLIPModel(clip_cfg, rngs=nnx.Rngs(0))
  model = UniVTG(
    UniVTGConfig(
      v_feat_dims=(12,),
      t_feat_dim=16,
      hidden_dim=32,
      nheads=4,
      enc_layers=1,
      dim_feedforward=48,
      clip_length=1.0,
    ),
    rngs=nnx.Rngs(1),
  )
  model.eval()
  return model, clip_model


def test_univtg_grounder_matches_the_official_pipeline(univtg_parts):
  from aotd_jax.data import univtg_features
  from aotd_jax.models import univtg_postprocess as post
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = univtg_parts
  g = UniVTGGrounder(model, clip_model, toy_tokenize, buckets=(4, 8), nms_threshold=None)
  frames = np.random.default_rng(2).integers(0, 255, (22, 24, 40, 3), dtype=np.uint8)
  clip = experts.VideoClip(frames, start_frame=50, fps=4.0, video_id="v")
  query = "the red circle jumps"
  # reference: the univtg module's own feature extraction and inputs, nothing padded
  ids, mask = toy_tokenize([query])
  inputs = post.batch_inputs(
    [univtg_features.clip_video_features(clip_model, frames, 4.0, clip_length=1.0)],
    univtg_features.clip_text_features(clip_model, ids, mask),
  )
  ref = model(**inputs)
  assert ref.pred_logits.shape[1] == 6  # 22 frames at 4 fps: 6 clips of 1 s
  ours = g.raw_outputs(clip, query)  # text padded to 16 tokens (masked)
  np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(ref.pred_logits), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ours[1]), np.asarray(ref.pred_spans), atol=1e-5)
  want = post.decode_moments(ref, clip_length=1.0, durations=[22 / 4.0], nms_thd=None, top_k=3)
  windows = g.ground(clip, query, top_k=3)
  assert [w.score for w in windows] == pytest.approx(
    [r[2] for r in want[0].pred_relevant_windows], abs=1e-4
  )
  for w, (s, e, _) in zip(windows, want[0].pred_relevant_windows):
    assert w.start_frame == 50 + min(int(np.floor(s * 4.0)), 21)
    assert 50 <= w.start_frame < w.end_frame <= 72


def test_univtg_grounder_reads_a_sampled_long_video_in_source_time(univtg_parts, tmp_path):
  """A 40 s, 30 fps video sampled to 32 frames is 40 s to the grounder (issue 19, item 1):
  one feature per clip_length second of source time, windows anywhere in the 1,200 frames."""
  from aotd_jax.data import video
  from aotd_jax.models import univtg_postprocess as post
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = univtg_parts
  g = UniVTGGrounder(model, clip_model, toy_tokenize, buckets=(4, 8), nms_threshold=None)
  frames = np.random.default_rng(5).integers(0, 255, (1200, 16, 16, 3), dtype=np.uint8)
  video.write_video(tmp_path / "long.mp4", frames, 30)
  from experts.clip import question_clip

  clip = question_clip(str(tmp_path / "long.mp4"), max_frames=32, video_id="long")
  assert len(clip) == 32 and clip.frame_ids[-1] == 1199
  assert clip.span_seconds == pytest.approx(40.0)
  feats, rows = g.features(clip)
  assert len(feats) == 40  # clip_length 1 s: was 1 feature when rows were read as 1/30 s apart
  assert rows[0] == 0 and rows[-1] == 30 and np.all(np.diff(rows) >= 0)  # 39 s: row 30
  times = clip.times[rows]
  assert np.all(np.abs(times - np.arange(40)) <= 40 / 31 / 2 + 1e-9)  # nearest sampled frame
  logits, spans, sal, vmask = g.raw_outputs(clip, "a shape spins")
  from aotd_jax.models.univtg import UniVTGOutput

  want = post.decode_moments(
    UniVTGOutput(
      pred_logits=logits,
      pred_spans=spans,
      saliency_scores=sal,
      vid_mem_proj=None,
      txt_mem_proj=None,
      src_vid_mask=vmask,
    ),
    clip_length=1.0,
    durations=[40.0],
    nms_thd=None,
    top_k=3,
  )[0].pred_relevant_windows
  windows = g.ground(clip, "a shape spins", top_k=3)
  for w, (s, e, _) in zip(windows, want):
    assert w.start_frame == min(int(np.floor(s * 30)), 1199)
    assert w.end_frame == min(max(int(np.ceil(e * 30)), w.start_frame + 1), 1200)
  assert max(w.end_frame for w in windows) > 60  # not confined to the first 2 s any more


def test_univtg_grounder_compiles_per_bucket_and_serves_filter_frames_with_act(univtg_parts):
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = univtg_parts
  g = UniVTGGrounder(model, clip_model, toy_tokenize, buckets=(4, 8), clip_buckets=(8, 16))
  box = experts.Toolbox(grounder=g)
  rng = np.random.default_rng(3)
  for i, n in enumerate([5, 9, 30, 17, 24]):  # 3 to 15 clips of 1 s: buckets 8 and 16
    clip = experts.VideoClip(
      rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), fps=2.0, video_id=f"v{i}"
    )
    window = box.Filter_frames_with_act(clip, "a shape spins")
    # the tool keeps the grounder's top window (clamped to the clip): those frames, no others
    top = g.ground(clip, "a shape spins", top_k=1)[0]
    lo = min(max(top.start_frame, 0), n)
    assert (window.start_frame, window.end_frame) == (lo, max(min(top.end_frame, n), lo))
    assert list(window.frame_ids) == list(range(window.start_frame, window.end_frame))
    assert box.records[-1].result["windows"][0]["end_frame"] == window.end_frame
  assert g.forward_compiles <= 2 and g.image_fn.compiles <= 2
  # padded clip counts agree with exact inference away from the end (3-tap conv heads)
  clip = experts.VideoClip(rng.integers(0, 255, (22, 16, 16, 3), dtype=np.uint8), fps=2.0)
  padded, exact = g.raw_outputs(clip, "spin"), g.raw_outputs(clip, "spin", pad=False)
  np.testing.assert_allclose(np.asarray(padded[0])[:, :8], np.asarray(exact[0])[:, :8], atol=1e-5)
  with pytest.raises(ValueError, match=r"v_feat_dims=\(12,\)"):
    from aotd_jax.models.univtg import UniVTG, UniVTGConfig
    from flax import nnx

    UniVTGGrounder(
      UniVTG(
        UniVTGConfig(
          v_feat_dims=(20, 12),
          t_feat_dim=16,
          hidden_dim=32,
          nheads=4,
          enc_layers=1,
          dim_feedforward=48,
        ),
        rngs=nnx.Rngs(0),
      ),
      clip_model,
      toy_tokenize,
    )


def test_univtg_grounder_image_buckets_are_the_image_towers_own(univtg_parts):
  # a CLIP image batch of one frame never forms where every call brings several frames: the
  # image tower can skip that bucket while the text side and the forward keep it
  from experts.backends.univtg import UniVTGGrounder

  model, clip_model = univtg_parts
  both = UniVTGGrounder(model, clip_model, toy_tokenize, buckets=(1, 8))
  own = UniVTGGrounder(model, clip_model, toy_tokenize, buckets=(1, 8), image_buckets=(8,))
  assert own.image_fn.buckets == (8,) and both.image_fn.buckets == (1, 8)
  assert own.text_fn.buckets == own.forward_fn.buckets == (1, 8)
  clip = experts.VideoClip(
    np.random.default_rng(5).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), fps=2.0
  )
  for a, b in zip(own.raw_outputs(clip, "spin"), both.raw_outputs(clip, "spin")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert own.image_fn.compiles == 1 and own.image_fn.calls == 1  # 6 clips: one chunk of 8


# -- LLaVA-NeXT-Video video QA -------------------------------------------------------------------

LV_VOCAB, LV_VIDEO, LV_IMAGE = 100, 99, 98


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("aotd_jax.models.llava_next_video")
  import tokenizers
  from tokenizers import models, pre_tokenizers

  path = tmp_path_factory.mktemp("llava")
  words = ["USER:", "ASSISTANT:", "the", "video", "what", "happens", "in", "red", "circle"]
  vocab = {
    "<pad>": 0,
    "<s>": 1,
    "</s>": 2,
    "<unk>": 3,
    **{w: i + 4 for i, w in enumerate(words)},
    **{f"w{i}": i for i in range(4 + len(words), LV_IMAGE)},
    "<image>": LV_IMAGE,
    "<video>": LV_VIDEO,
  }
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="<s>",
    eos_token="</s>",
    pad_token="<pad>",
    unk_token="<unk>",
    additional_special_tokens=["<video>", "<image>"],
  )
  vision = transformers.CLIPVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    image_size=28,
    patch_size=7,
    projection_dim=16,
  )
  text = transformers.LlamaConfig(
    vocab_size=LV_VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    eos_token_id=2,
    bos_token_id=1,
  )
  cfg = transformers.LlavaNextVideoConfig(
    vision_config=vision,
    text_config=text,
    image_token_index=LV_IMAGE,
    video_token_index=LV_VIDEO,
    image_grid_pinpoints=[[28, 28]],
  )
  torch.manual_seed(0)
  reference = transformers.LlavaNextVideoForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  reference.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return reference, str(path)


@pytest.mark.slow  # builds and runs a transformers LLaVA-NeXT-Video: ~1 min on 2 busy cores
def test_llava_video_qa_generates_as_transformers(llava):
  import torch
  from experts.backends import llava as llava_backend

  reference, path = llava
  model, tokenizer = llava_backend.load(path)
  qa = llava_backend.LlavaVideoQA(model, tokenizer, num_frames=4, max_new_tokens=6)
  frames = np.random.default_rng(4).integers(0, 255, (13, 30, 40, 3), dtype=np.uint8)
  clip = experts.VideoClip(frames, video_id="v")
  ids, pixels = qa.inputs(clip, "what happens in the video")
  assert pixels.shape == (1, 4, 3, 28, 28)
  assert int((ids == LV_VIDEO).sum()) == 4 * model.config.video_tokens_per_frame()
  with torch.no_grad():
    want = reference.generate(
      input_ids=torch.tensor(ids).long(),
      attention_mask=torch.ones(ids.shape, dtype=torch.long),
      pixel_values_videos=torch.tensor(pixels),
      max_new_tokens=6,
      do_sample=False,
      pad_token_id=0,
      eos_token_id=2,
    )
  want_text = tokenizer.decode(want[0, ids.shape[1] :].tolist(), skip_special_tokens=True).strip()
  assert qa.generate_text(clip, "what happens in the video") == want_text
  # through the tools: Query_Actions snaps the reply to one of the candidates; cached
  box = experts.Toolbox(action_recognizer=qa, video_qa=qa)
  acts = box.Query_Actions(clip, "red circle", ["The red circle jumped.", "The red circle spun."])
  assert len(acts) == 1 and acts[0] in ["The red circle jumped.", "The red circle spun."]
  assert isinstance(box.Video_summary(clip), str)
  box.Query_Actions(clip, "red circle", ["The red circle jumped.", "The red circle spun."])
  assert box.records[-1].cache_hits == 1


def test_llava_video_qa_scores_choices_by_transformers_likelihood(llava):
  """Closed-set multiple choice: each choice's reply log-likelihood equals the one computed
  by hand from transformers' logits, and the answer is the likeliest choice, where free
  generation of this random model replies with no choice at all."""
  import torch
  from experts.backends import llava as llava_backend

  reference, path = llava
  model, tokenizer = llava_backend.load(path)
  qa = llava_backend.LlavaVideoQA(model, tokenizer, num_frames=4, max_new_tokens=3)
  clip = experts.VideoClip(
    np.random.default_rng(5).integers(0, 255, (9, 28, 28, 3), np.uint8), video_id="v"
  )
  choices = ["red circle", "the video", "circle", "what happens in the video"]
  user = "what happens in the video"
  ids, pixels = qa.inputs(clip, user)
  want = []
  for reply in choices:
    t = tokenizer(" " + reply, add_special_tokens=False)["input_ids"] + [2]
    full = torch.tensor([list(ids[0]) + t]).long()
    with torch.no_grad():
      logits = reference(input_ids=full, pixel_values_videos=torch.tensor(pixels)).logits
    logp = torch.log_softmax(logits[0, :-1].double(), -1)
    want.append(sum(float(logp[ids.shape[1] - 1 + i, tok]) for i, tok in enumerate(t)))
  got = qa.score_choices(clip, user, choices)
  np.testing.assert_allclose(got, want, atol=2e-3)
  assert len(set(np.round(want, 3))) == len(choices)  # a real ranking, not ties
  from aotd_jax.data.conversation import ANSWER_SUFFIX, format_question

  answer = qa.answer(clip, "what", choices)
  scored = qa.score_choices(clip, format_question("what", choices) + "\n" + ANSWER_SUFFIX, choices)
  assert answer == choices[int(np.argmax(scored))]
  pmi = llava_backend.LlavaVideoQA(model, tokenizer, num_frames=4, choice_scoring="pmi")
  user_mc = format_question("what", choices) + "\n" + ANSWER_SUFFIX
  blank = pmi.score_choices(clip, user_mc, choices, blank=True)
  assert not np.allclose(blank, scored)  # the video counts
  assert pmi.answer(clip, "what", choices) == choices[int(np.argmax(scored - blank))]
  free = llava_backend.LlavaVideoQA(
    model, tokenizer, num_frames=4, max_new_tokens=3, choice_scoring="generate"
  )
  assert free.answer(clip, "what", choices) not in choices  # the reply it would have given
  assert qa.recognize(clip, None, choices)[0] in choices
  # the official prompt ("Question:/Options:") is what an official-format expert scores
  official = llava_backend.LlavaVideoQA(model, tokenizer, num_frames=4, prompt_format="official")
  user_official = format_question("what", choices, "official") + "\n" + ANSWER_SUFFIX
  assert user_official.startswith("Question: what\nOptions:\n(A)")
  want_official = official.score_choices(clip, user_official, choices)
  assert official.answer(clip, "what", choices) == choices[int(np.argmax(want_official))]


def test_llava_choice_reply_forms():
  from experts.backends import llava as llava_backend

  choices = ["red circle jumps", "blue square moves"]
  assert llava_backend.choice_reply(choices, 1) == "blue square moves"
  assert llava_backend.choice_reply(choices, 1, "letter") == "(B)"
  assert llava_backend.choice_reply(choices, 1, "letter_text") == "(B) blue square moves"


def test_llava_video_qa_rejects_bad_scoring_arguments():
  import types
  from experts.backends import llava as llava_backend

  model = types.SimpleNamespace(config=types.SimpleNamespace(video_token_index=LV_VIDEO))
  with pytest.raises(ValueError, match="choice_scoring='vote' is not one of"):
    llava_backend.LlavaVideoQA(model, object(), choice_scoring="vote")
  with pytest.raises(ValueError, match="answer_format='index' is not one of"):
    llava_backend.LlavaVideoQA(model, object(), answer_format="index")

  class Tokenizer:
    unk_token_id = 3

    def convert_tokens_to_ids(self, token):
      return {"<video>": LV_VIDEO}.get(token, 3)

  qa = llava_backend.LlavaVideoQA(model, Tokenizer())
  with pytest.raises(ValueError, match="score_choices: no replies"):
    qa.score_choices(None, "what happens?", [])


def test_llava_video_qa_rejects_a_tokenizer_without_the_video_token():
  import types
  from experts.backends import llava as llava_backend

  class Tokenizer:
    unk_token_id = 3

    def convert_tokens_to_ids(self, token):
      return {"<video>": LV_VIDEO}.get(token, 3)

  model = types.SimpleNamespace(config=types.SimpleNamespace(video_token_index=LV_IMAGE))
  with pytest.raises(ValueError, match="no single token for '<vid>'"):
    llava_backend.LlavaVideoQA(model, Tokenizer(), video_token="<vid>")
  with pytest.raises(ValueError, match="!= the model's video_token_index 98"):
    llava_backend.LlavaVideoQA(model, Tokenizer())


def test_registry_binds_the_llava_feature_cache(llava):
  _, path = llava
  config = registry.default_config()
  config.detector.kind = config.grounder.kind = config.action_recognizer.kind = "none"
  config.video_qa = {"kind": "llava", "path": path, "num_frames": 2}
  box = experts.make_toolbox(config, plugins=[TOYWORLD])
  assert box.video_qa.feature_cache.max_bytes == 1024 << 20  # the default
  config.video_qa.feature_cache_mb = 2
  assert (
    experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa.feature_cache.max_bytes == 2 << 20
  )
  config.video_qa.feature_cache_mb = 0
  assert experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa.feature_cache is None
  config.video_qa.feature_cache_mb = -1
  with pytest.raises(ValueError, match="feature_cache_mb must be >= 0"):
    experts.make_toolbox(config, plugins=[TOYWORLD])
  config.video_qa.feature_cache_mb = 1
  assert experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa.prefix_cache is None  # default
  config.video_qa.prefix_cache_mb = 3
  assert experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa.prefix_cache.max_bytes == 3 << 20
  config.video_qa.prefix_cache_mb = -1
  with pytest.raises(ValueError, match="prefix_cache_mb must be >= 0"):
    experts.make_toolbox(config, plugins=[TOYWORLD])


def test_registry_passes_the_llava_request_buckets(llava):
  """A llava role's `buckets` reach the backend and the parts it compiles (the CoT configs cap
  LLaVA's batches with it); absent, the backend's default (1, 2, 4, 8, 16)."""
  _, path = llava
  config = registry.default_config()
  config.detector.kind = config.grounder.kind = config.action_recognizer.kind = "none"
  config.video_qa = {"kind": "llava", "path": path, "num_frames": 2}
  assert experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa.buckets == (1, 2, 4, 8, 16)
  config.video_qa.buckets = (4, 1)
  qa = experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa
  assert qa.buckets == (1, 4)
  qa.video_features(experts.VideoClip(np.zeros((2, 28, 28, 3), np.uint8), video_id="v"))
  assert qa._fns["features"].buckets == (1, 4)  # the compiled part's own buckets


@pytest.mark.parametrize(
  "role,value",
  [("video_qa", (0, 4)), ("video_qa", "1,4"), ("video_qa", (1.5,)), ("action_recognizer", 8)],
)
def test_registry_names_a_bad_llava_buckets_value(llava, role, value):
  _, path = llava
  config = registry.default_config()
  config.detector.kind = config.grounder.kind = "none"
  config.action_recognizer.kind = config.video_qa.kind = "none"
  config[role] = {"kind": "llava", "path": path, "num_frames": 2, "buckets": value}
  with pytest.raises(ValueError, match=rf"experts config: {role}\.buckets="):
    experts.make_toolbox(config, plugins=[TOYWORLD])


def test_registry_loads_llava_in_the_role_dtype(llava):
  """A llava role's `dtype` is its weights' and computation's (the CoT configs: bfloat16, as
  the official AoTD's half precision); absent, float32; a bad one is named before loading."""
  _, path = llava
  config = registry.default_config()
  config.detector.kind = config.grounder.kind = config.action_recognizer.kind = "none"
  config.video_qa = {"kind": "llava", "path": path, "num_frames": 2}
  qa = experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa
  assert qa.model.language_model.options.dtype == "float32"
  config.video_qa.dtype = "bfloat16"
  qa = experts.make_toolbox(config, plugins=[TOYWORLD]).video_qa
  assert qa.model.language_model.options.dtype == "bfloat16"
  from flax import nnx

  leaves = jax.tree.leaves(nnx.state(qa.model, nnx.Param))
  assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}
  frames = np.random.default_rng(0).integers(0, 255, (2, 28, 28, 3), np.uint8)
  reply = qa.summarize(experts.VideoClip(frames, video_id="v"))
  assert isinstance(reply, str)  # the bf16 model runs the generation path
  config.video_qa.dtype = "fp8"
  with pytest.raises(ValueError, match=r"experts config: video_qa\.dtype='fp8'"):
    experts.make_toolbox(config, plugins=[TOYWORLD])
