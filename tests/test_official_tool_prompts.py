"""select_answer's, Video_summary's and Query_Actions' prompts: the official release's structure (our words,
`data/prompts/*_official.txt`) by default in the real CoT configs, ours as an option."""

import pytest

from aotd_jax.rehearsal import stub_server
from experts.backends import llava, llm

CHOICES = ["the cup", "the book", "the bag"]
INFO = "- object found: the book in frames 3 to 9\n- action: holding"


class _Recorder:
  def __init__(self, reply="B"):
    self.prompts, self.reply = [], reply

  def complete(self, prompts, *, max_new_tokens, temperature=0.0, stop=None):
    del max_new_tokens, temperature, stop
    self.prompts += prompts
    return [self.reply] * len(prompts)


def test_official_select_prompt_has_the_release_structure():
  text = llm.select_prompt("what is held?", CHOICES, INFO, "official")
  # one worked example, then the question, the evidence lines, the options, the answer cue
  assert text.count("- Question:") == 2 and text.rstrip().endswith("- Selected answer:")
  tail = text.split("- Question: what is held?", 1)[1]
  assert tail.index(INFO) < tail.index(
    "- Possible answers:\n(A) the cup\n(B) the book\n(C) the bag"
  )
  ours = llm.select_prompt("what is held?", CHOICES, INFO)
  assert "- Possible answers:" not in ours and "- Options:\n(A) the cup" in ours
  with pytest.raises(ValueError, match="selector prompt 'short'"):
    llm.select_prompt("q", CHOICES, INFO, "short")


def test_selector_sends_the_configured_prompt():
  rec = _Recorder()
  sel = llm.LLMSelector(rec, prompt="official")
  assert sel.select("what is held?", CHOICES, INFO) == "B"
  assert rec.prompts[0][0]["content"] == llm.select_prompt(
    "what is held?", CHOICES, INFO, "official"
  )
  with pytest.raises(ValueError, match="selector.prompt='x'"):
    llm.LLMSelector(rec, prompt="x")


def test_summary_request_per_style():
  official = llava.summary_text("official", "what is held?")
  assert "one sentence" in official and "what is held" not in official  # the release's ignores it
  assert llava.summary_text("ours", "what is held?").endswith("Focus on: what is held?")
  assert llava.summary_text("ours") == llava.SUMMARY_PROMPT
  with pytest.raises(ValueError, match="summary_prompt='long'"):
    llava.summary_text("long")


def test_real_configs_default_to_the_official_prompts():
  from configs.cot import nextqa, star

  for mod in (star, nextqa):
    arg = "ann=a,videos=v,owlv2=o,univtg=u,clip=c,llava=l,llm=http://x/v1"
    if mod is nextqa:
      arg += ",map=m"
    c = mod.get_config(arg)
    assert c.experts.selector.prompt == "official"
    assert c.experts.video_qa.summary_prompt == "official"
    assert c.experts.action_recognizer.action_prompt == "official"
    c = mod.get_config(arg.replace("llm=http://x/v1", "llm=http://x/v1,selector=keyword"))
    assert c.experts.selector.kind == "keyword"


def test_rehearsal_stub_answers_the_official_selector_prompt():
  text = llm.select_prompt("what is held?", CHOICES, INFO, "official")
  assert stub_server.classify(text) == "selector"
  replies = stub_server.Replies({"what is held?": "the bag"})
  assert replies.reply(text) == "(C)"  # from the question's options, not the worked example's
  wrong = stub_server.Replies({"what is held?": "the cup"}, wrong={"what is held?"})
  assert wrong.reply(text) == "(B)"


def test_action_questions_per_style():
  assert llava.action_question("official", "the cup", True) == "What did the person do to the cup?"
  assert llava.action_question("official", None, True) == "What did the person do?"
  free = llava.action_question("official", None, False)
  assert "verb phrase" in free and free.rstrip().endswith("action:")
  assert llava.action_question("ours", "cup", True) == llava.OBJECT_ACTIONS_PROMPT.format(
    object="cup"
  )
  assert llava.action_question("ours", None, False) == llava.ACTIONS_PROMPT
  with pytest.raises(ValueError, match="action_prompt='short'"):
    llava.action_question("short", None, False)


def test_official_recognition_generates_freely_without_options():
  calls = []
  qa = llava.LlavaVideoQA.__new__(llava.LlavaVideoQA)  # the prompts only: no model needed
  qa.action_prompt = "official"
  qa.generate_text = lambda clip, text: calls.append(("generate", text)) or "open the fridge"
  qa.answer = lambda clip, q, c: calls.append(("answer", q, c)) or "(B) sit down"
  assert qa.recognize(None) == ["open the fridge"]
  assert calls[-1] == ("generate", llava.action_question("official", None, False))
  assert qa.recognize(None, "the cup", ["open it", "sit down"]) == ["sit down"]
  assert calls[-1] == ("answer", "What did the person do to the cup?", ["open it", "sit down"])
