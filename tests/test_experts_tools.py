"""The expert tools' semantics on toy-world clips, with ground-truth (oracle) experts."""

import json

import numpy as np
import pytest

import experts
from aotd_jax.projects.toyworld import oracle as toyworld_oracle
from aotd_jax.projects.toyworld import world as toyworld
from experts.backends import oracle
from experts.tools import ToolError, format_info, snap_to_choice

SEED = 0


@pytest.fixture(scope="module")
def world():
  """Two toy clips: frames, ground truth, and a toolbox of oracle experts over them."""
  clips = [toyworld.generate_clip(SEED, "train", i)[:2] for i in range(2)]
  truths = {t.video_id: t for _, t in clips}
  return clips, truths


def make_box(truths, **kw):
  gt = toyworld_oracle.ground_truth(truths)
  return experts.Toolbox(
    detector=oracle.OracleDetector(gt),
    grounder=oracle.OracleGrounder(gt),
    action_recognizer=oracle.OracleActions(gt),
    video_qa=oracle.OracleActions(gt),
    selector=oracle.KeywordSelector(),
    object_vocabulary=toyworld.ALL_OBJECT_NAMES,
    **kw,
  )


@pytest.fixture
def box(world):
  return make_box(world[1])


def clip_of(world, i=0):
  frames, truth = world[0][i]
  return experts.VideoClip(frames, fps=truth.fps, video_id=truth.video_id), truth


# -- VideoClip ---------------------------------------------------------------------------------


def test_video_clip_keeps_source_frame_ids_and_shares_frames(world):
  clip, truth = clip_of(world)
  assert (clip.start_frame, clip.end_frame, len(clip)) == (0, truth.num_frames, truth.num_frames)
  sub = clip.select([2, 5, 6])
  assert list(sub.frame_ids) == [2, 5, 6] and (sub.start_frame, sub.end_frame) == (2, 7)
  np.testing.assert_array_equal(sub.frames, world[0][0][0][[2, 5, 6]])
  np.testing.assert_array_equal(np.asarray(sub.device_frames()), sub.frames)
  np.testing.assert_array_equal(
    np.asarray(clip.select(range(3, 9)).device_frames()), world[0][0][0][3:9]
  )
  assert sub._store is clip._store  # no pixel copy between clips of one program
  js = sub.to_json()
  assert js["frame_ids"] == [2, 5, 6] and js["video_id"] == truth.video_id
  json.dumps(js)


@pytest.mark.parametrize(
  "frames,msg",
  [
    (np.zeros((4, 8, 8), np.uint8), "shape"),
    (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
  ],
)
def test_video_clip_rejects_bad_frames(frames, msg):
  with pytest.raises(ValueError, match=msg):
    experts.VideoClip(frames)


def test_video_clip_rejects_bad_metadata():
  frames = np.zeros((3, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="frame_ids"):
    experts.VideoClip(frames, frame_ids=[0, 1])
  with pytest.raises(ValueError, match="fps"):
    experts.VideoClip(frames, fps=0)
  with pytest.raises(ValueError, match="end_frame"):
    experts.VideoClip(frames, start_frame=5, end_frame=2)


# -- trim --------------------------------------------------------------------------------------


def test_trim_uses_source_frame_numbers_and_clips_bounds(world, box):
  clip, truth = clip_of(world)
  part = box.trim(clip, 5, 12)
  assert (part.start_frame, part.end_frame, list(part.frame_ids)) == (5, 12, list(range(5, 12)))
  inner = box.trim(part, 8, None)  # frame numbers stay those of the source video
  assert (inner.start_frame, inner.end_frame) == (8, 12)
  np.testing.assert_array_equal(inner.frames, world[0][0][0][8:12])
  wide = box.trim(part, -100, 10_000)
  assert (wide.start_frame, wide.end_frame) == (5, 12)
  assert box.trim(clip).end_frame == truth.num_frames


def test_trim_empty_range_gives_empty_clip_and_tools_give_empty_results(world, box):
  clip, _ = clip_of(world)
  empty = box.trim(clip, 10, 4)
  assert len(empty) == 0 and empty.start_frame == empty.end_frame == 10
  assert len(box.Find(empty, "red circle")) == 0
  assert box.exist(empty, "red circle") is False
  assert box.Count(empty, "red circle") == 0
  assert box.Query_Actions(empty) == []
  assert box.Video_summary(empty) == ""
  assert len(box.Filter_frames_with_act(empty, "the red circle jumps")) == 0
  assert len(box.Query_Objs(empty, "objects")) == 0


@pytest.mark.parametrize(
  "kwargs,arg", [({"start": "3"}, "start"), ({"end": [4]}, "end"), ({"start": True}, "start")]
)
def test_trim_rejects_non_numbers(world, box, kwargs, arg):
  clip, _ = clip_of(world)
  with pytest.raises(ToolError, match=f"trim: {arg}"):
    box.trim(clip, **kwargs)


def test_tools_reject_a_non_clip_and_bad_names(box):
  with pytest.raises(ToolError, match="Find: video_clip must be a VideoClip, got list"):
    box.Find([1, 2], "cup")
  clip = experts.VideoClip(np.zeros((2, 8, 8, 3), np.uint8), video_id="x")
  with pytest.raises(ToolError, match="exist: object_name must be a non-empty string"):
    box.exist(clip, "  ")
  with pytest.raises(ToolError, match="Find: .*argument"):
    box.Find(clip)


# -- detection tools ---------------------------------------------------------------------------


def test_find_exist_count_filter_match_ground_truth(world, box):
  clip, truth = clip_of(world)
  name = truth.names[0]
  visible = np.nonzero(truth.visible[:, 0])[0]
  found = box.Find(clip, name)
  assert list(found.frame_ids) == list(visible)
  assert found.detections.frame_ids == list(visible)
  for b in found.detections:
    np.testing.assert_allclose(b.box, truth.boxes[b.frame_id, 0])
    assert b.label == name
  assert box.exist(clip, name) is True
  assert box.Count(clip, name) == 1
  filtered = box.Filter_frames_with_obj(clip, name)
  assert list(filtered.frame_ids) == list(visible)
  assert (filtered.start_frame, filtered.end_frame) == (visible[0], visible[-1] + 1)
  # a slash gives alternative names of one object
  assert box.exist(clip, f"purple hexagon/{name}") is True


def test_unknown_object_gives_empty_results(world, box):
  clip, _ = clip_of(world)
  absent = next(n for n in toyworld.ALL_OBJECT_NAMES if n not in world[0][0][1].names)
  assert len(box.Find(clip, absent)) == 0
  assert box.exist(clip, absent) is False
  assert box.Count(clip, absent) == 0
  assert len(box.Filter_frames_with_obj(clip, absent)) == 0
  assert len(box.Query_Objs(clip, absent)) == 0


def test_query_objs_labels_boxes_by_class(world, box):
  clip, truth = clip_of(world)
  objs = box.Query_Objs(clip, "objects")  # a description: every known class is looked for
  assert set(objs.labels) == set(truth.names)
  assert len(objs) == int(truth.visible.sum())
  picked = box.Query_Objs(clip, "which one?", [f"The {truth.names[1]}.", "The purple hexagon."])
  assert picked.labels == [truth.names[1]]
  with pytest.raises(ToolError, match="Query_Objs: possible_answers"):
    box.Query_Objs(clip, "objects", "red circle")


def test_query_objs_resolves_a_description_with_the_video_qa_model(world, box):
  clip, truth = clip_of(world)
  touch = next(e for e in truth.events if e["action"] == "touch")
  window = box.trim(clip, touch["start_frame"], touch["end_frame"] + 1)
  objs = box.Query_Objs(window, f"the object touched by the {touch['object']}")
  assert objs.answer == touch["target"] and objs.labels[0] == touch["target"]
  assert box.Query_Objs(window, "the object that is touched").answer == touch["target"]
  assert box.Query_Objs(window, "objects").answer is None  # "every object": no question
  assert box.records[-2].result["answer"] == touch["target"]


def test_count_is_the_most_boxes_in_one_frame():
  frames = np.zeros((3, 16, 16, 3), np.uint8)
  gt = oracle.GroundTruth("test")
  gt.add_frame("v", 0, [("cup", (0, 0, 2, 2))], [])
  gt.add_frame("v", 1, [("cup", (0, 0, 2, 2)), ("cup", (5, 5, 8, 8)), ("dog", (1, 1, 3, 3))], [])
  gt.add_frame("v", 2, [], [])
  box = experts.Toolbox(detector=oracle.OracleDetector(gt))
  clip = experts.VideoClip(frames, video_id="v")
  assert box.Count(clip, "cup") == 2
  assert box.Count(clip, "cups") == 2  # the oracle matches word stems
  assert box.Count(clip, "bowl") == 0
  assert box.Count(clip, "dog") == 1


# -- actions and grounding ---------------------------------------------------------------------


def test_filter_frames_with_act_returns_the_event_window(world, box):
  clip, truth = clip_of(world)
  ev = truth.events[-1]
  phrase = f"the {ev['object']} {ev['action']}s"
  window = box.Filter_frames_with_act(clip, phrase)
  assert (window.start_frame, window.end_frame) == (ev["start_frame"], ev["end_frame"] + 1)
  record = box.records[-1]
  assert record.name == "Filter_frames_with_act"
  assert record.result["windows"][0]["start_frame"] == ev["start_frame"]
  assert len(box.Filter_frames_with_act(clip, "the purple hexagon explodes")) == 0
  with pytest.raises(ToolError, match="Filter_frames_with_act: action"):
    box.Filter_frames_with_act(clip, "")


def test_query_actions_ranks_candidates_and_filters_by_object(world, box):
  clip, truth = clip_of(world)
  ev = truth.events[0]
  window = box.trim(clip, ev["start_frame"], ev["end_frame"] + 1)
  right = f"The {ev['object']} {ev['action']}ed."
  choices = ["The purple hexagon jumped.", right]
  assert box.Query_Actions(window, None, choices) == [right]
  acts = box.Query_Actions(window, ev["object"])
  assert acts and all(ev["object"] in a for a in acts)
  assert box.Query_Actions(window, "purple hexagon") == []
  with pytest.raises(ToolError, match="Query_Actions: possible_actions"):
    box.Query_Actions(window, None, "jumped")


def test_video_summary_mentions_objects_and_actions(world, box):
  clip, truth = clip_of(world)
  text = box.Video_summary(clip)
  assert all(n in text for n in truth.names)
  assert truth.events[0]["object"] in text


# -- select_answer -----------------------------------------------------------------------------


def test_select_answer_returns_one_choice_in_any_argument_order(box):
  choices = ["The red circle jumped.", "The blue square spun."]
  info = {"actions": ["blue square spins"]}
  assert box.select_answer("What happened?", choices, info) == choices[1]
  assert box.select_answer("What happened?", info, choices) == choices[1]  # AoTD's order
  clip = experts.VideoClip(np.zeros((1, 4, 4, 3), np.uint8), video_id="x")
  assert box.select_answer(clip, "What happened?", choices, info) == choices[1]
  with pytest.raises(ToolError, match="select_answer: possible_answers"):
    box.select_answer("q", [], info)


@pytest.mark.parametrize(
  "text,want",
  [
    ("B", "spun"),
    ("(A) jumped", "jumped"),
    ("spun", "spun"),
    ("It spun around", "spun"),
    ("jumpd", "jumped"),
  ],
)
def test_snap_to_choice(text, want):
  assert snap_to_choice(text, ["jumped", "spun"]) == want


def test_format_info_renders_nested_evidence(world, box):
  clip, truth = clip_of(world)
  found = box.Find(clip, truth.names[0])
  text = format_info({"found": found.detections, "clip": clip, "nested": {"k": [1, 2]}})
  assert f"{truth.names[0]} found in frames" in text
  assert "frames 0 to" in text and "\t- k: 1, 2" in text


def test_missing_backend_names_the_config_key():
  box = experts.Toolbox()
  clip = experts.VideoClip(np.zeros((2, 8, 8, 3), np.uint8), video_id="x")
  with pytest.raises(RuntimeError, match=r"config\.grounder"):
    box.Filter_frames_with_act(clip, "jump")
  with pytest.raises(RuntimeError, match=r"config\.detector"):
    box.Find(clip, "cup")


# -- records, docs, end to end -----------------------------------------------------------------


def test_every_call_is_recorded_as_json(world, box):
  clip, truth = clip_of(world)
  box.exist(clip, truth.names[0])
  box.Count(clip, truth.names[0])
  box.Find(clip, truth.names[0])
  names = [r.name for r in box.records]
  assert names == ["exist", "Count", "Find"]
  rec = json.loads(json.dumps([r.to_json() for r in box.records]))
  assert rec[0]["result"]["value"] is True and rec[0]["result"]["detections"]["boxes"]
  assert rec[2]["result"]["detections"]["frames"]
  assert rec[0]["args"]["video_clip"]["video_id"] == truth.video_id


def test_api_docs_document_every_tool_with_an_example():
  docs = experts.api_docs()
  for name in experts.TOOL_NAMES:
    assert f"def {name}(" in docs
  assert docs.count("Examples") == len(experts.TOOL_NAMES)
  assert "frame number of the ORIGINAL video" in docs


PROGRAM = '''
def execute_command(video_clip, query, possible_answers):
    event_clip = Filter_frames_with_act(video_clip, EVENT)
    before_clip = trim(video_clip, start=None, end=event_clip.start_frame)
    actor = Find(before_clip, ACTOR)
    actions = Query_Actions(before_clip, possible_actions=possible_answers)
    info = {"actions right before": actions, "actor seen in frames": actor.frame_ids}
    return select_answer(query, possible_answers, info)
'''


def test_end_to_end_program_calling_five_tools(world):
  """A plain-Python program using trim, Find, Filter_frames_with_act, Query_Actions, select_answer."""
  clip, truth = clip_of(world)
  first, second = truth.events[0], truth.events[-1]
  assert first["end_frame"] < second["start_frame"]
  tools = make_box(world[1]).tools()
  scope = dict(tools, EVENT=f"the {second['object']} {second['action']}s", ACTOR=first["object"])
  exec(PROGRAM, scope)  # the sandbox is another module's job; here a plain call
  right = (
    f"The {first['object']} {first['action']}ed the {first['target']}."
    if first["target"]
    else f"The {first['object']} {first['action']}ed."
  )
  choices = ["The purple hexagon spun.", right, "The green square grew."]
  answer = scope["execute_command"](clip, "What happened right before?", choices)
  assert answer == right
  toolbox = tools["trim"].__self__
  assert [r.name for r in toolbox.records] == [
    "Filter_frames_with_act",
    "trim",
    "Find",
    "Query_Actions",
    "select_answer",
  ]
  json.dumps([r.to_json() for r in toolbox.records])


def test_concurrent_calls_record_their_own_evidence(world):
  """A sandbox may serve tool calls from several threads on one toolbox."""
  import threading

  box = make_box(world[1])
  clip, truth = clip_of(world)

  def work(name):
    for _ in range(30):
      box.exist(clip, name)

  threads = [threading.Thread(target=work, args=(n,)) for n in truth.names[:3]]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(box.records) == 90
  for r in box.records:
    assert r.result["detections"]["object"] == r.args["object_name"]


# -- the official AoTD's Find (crops) and exist (detector + video QA) ------------------------


class _OneBox:
  """A detector that finds `name` at one fixed box in every frame whose id is even."""

  name = "one-box"

  def detect(self, clip, queries, *, threshold):
    return [
      [experts.Box(int(f), q, 0.9, (4.0, 6.0, 14.0, 20.0)) for q in queries]
      if int(f) % 2 == 0
      else []
      for f in clip.frame_ids
    ]


class _SaysYes:
  name = "qa"

  def __init__(self, reply="Yes, it is."):
    self.reply, self.calls = reply, []

  def answer(self, clip, question, choices=None):
    self.calls.append((question, clip))
    return self.reply


def test_find_crops_are_the_official_224px_crops_with_a_margin():
  import PIL.Image

  frames = np.random.default_rng(0).integers(0, 255, (6, 30, 40, 3), dtype=np.uint8)
  clip = experts.VideoClip(frames, start_frame=10, video_id="v")
  box = experts.Toolbox(detector=_OneBox(), find="crops")
  found = box.Find(clip, "cup")
  assert list(found.frame_ids) == [10, 12, 14] and found.frames.shape == (3, 224, 224, 3)
  # box (4, 6, 14, 20) + 10 px margin, clipped to the 40 x 30 frame: x 0..24, y 0..30
  want = np.asarray(
    PIL.Image.fromarray(frames[2][0:30, 0:24]).resize((224, 224), PIL.Image.BILINEAR)
  )
  np.testing.assert_array_equal(found.frames[1], want)
  assert [b.frame_id for b in found.detections.boxes] == [10, 12, 14]
  frames_mode = experts.Toolbox(detector=_OneBox()).Find(clip, "cup")
  assert frames_mode.frames.shape == (3, 30, 40, 3)
  with pytest.raises(ValueError, match="find='boxes'"):
    experts.Toolbox(find="boxes")


def test_exist_with_the_video_qa_check():
  frames = np.zeros((4, 30, 40, 3), np.uint8)
  clip = experts.VideoClip(frames, video_id="v")
  qa = _SaysYes()
  box = experts.Toolbox(detector=_OneBox(), video_qa=qa, exist="detector+qa")
  assert box.exist(clip, "laptop") is True
  question, crops = qa.calls[0]
  assert question == "Is this laptop?" and crops.frames.shape == (2, 224, 224, 3)
  assert (
    experts.Toolbox(detector=_OneBox(), video_qa=_SaysYes("No."), exist="detector+qa").exist(
      clip, "laptop"
    )
    is False
  )
  # nothing detected: no question asked
  empty = experts.VideoClip(frames[1:2], start_frame=1, video_id="v")
  quiet = _SaysYes()
  assert (
    experts.Toolbox(detector=_OneBox(), video_qa=quiet, exist="detector+qa").exist(empty, "laptop")
    is False
    and not quiet.calls
  )
  with pytest.raises(ValueError, match="exist='qa'"):
    experts.Toolbox(exist="qa")


def test_registry_binds_the_tool_modes():
  from experts import registry

  config = registry.default_config()
  config.tools.find, config.tools.exist = "crops", "detector+qa"
  config.ground_truth.path = "unused"
  for role in ("detector", "grounder", "action_recognizer", "video_qa"):
    config[role].kind = "none"
  toolbox = registry.make_toolbox(config, plugins=[toyworld_oracle.PLUGIN])
  assert (toolbox.find_mode, toolbox.exist_mode) == ("crops", "detector+qa")


def test_toolbox_close_stops_each_backend_once_and_the_scheduler():
  """A backend serving two roles is one backend: closed once; then the scheduler."""
  from experts.scheduler import DeviceScheduler

  class Backend:
    closed = 0

    def close(self):
      self.closed += 1

  llava, detector = Backend(), Backend()
  scheduler = DeviceScheduler()
  box = experts.Toolbox(
    detector=detector, action_recognizer=llava, video_qa=llava, scheduler=scheduler
  )
  assert box.backends() == [detector, llava]
  box.close()
  assert (detector.closed, llava.closed) == (1, 1)
  with pytest.raises(RuntimeError, match="closed"):
    scheduler.attach(object())
