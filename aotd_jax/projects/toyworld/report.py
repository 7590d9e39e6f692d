"""The demo's report: `report.json`, a printed table like the paper's, and `report.html`.

`report.html` is self-contained (no network): the tables, a PNG plot of accuracy per
question type and student, an SVG plot of seconds per question and peak memory, the
students' sample outputs, and sample agent traces (frames with boxes, windows, verdicts)
rendered by `aotd_jax.agent.viewer` into `traces_cot.html` / `traces_agent.html`, linked and
embedded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any, Mapping

EXPERT_KEYS = ("detection_iou", "grounding_iou", "action_top1", "qa_accuracy", "program_accuracy")
STUDENT_LABELS = {
  "instruct": "Instruct (QA only)",
  "aotd": "AoTD (QA + filtered CoTs)",
  "aotd_unfiltered": "AoTD w/o filter (QA + all CoTs)",
}


def _pct(x: Any) -> str:
  return "-" if x is None else f"{100 * float(x):.1f}"


def _num(x: Any, fmt: str = ".3f") -> str:
  return "-" if x is None else format(float(x), fmt)


def student_rows(rep: Mapping) -> tuple[list[str], list[list[str]]]:
  """Header and rows of the main table: accuracy (%) overall and per type, per student."""
  students = rep["students"]
  types = sorted({t for s in students.values() for t in s["per_type"]})
  header = ["model"] + types + ["overall"]
  rows = []
  for name, s in students.items():
    overall = _pct(s["accuracy"])
    if len(s.get("per_seed", [])) > 1:
      overall += f" ± {100 * s['accuracy_std']:.1f}"
    rows.append(
      [STUDENT_LABELS.get(name, name)] + [_pct(s["per_type"].get(t)) for t in types] + [overall]
    )
  eff = rep.get("efficiency", {})
  if eff.get("agent_accuracy") is not None:
    rows.append(
      [f"agent (experts + program), first {eff['questions']}"]
      + ["" for _ in types]
      + [_pct(eff["agent_accuracy"])]
    )
  return header, rows


def _text_table(header, rows) -> str:
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _encoder_line(scores: Mapping | None) -> list[str]:
  if not scores:
    return []
  return [
    f"frame encoder (val): object under a patch {_num(scores['identity'])} (chance "
    f"{_num(scores['identity_chance'])}), object in frame {_num(scores['presence'])} "
    f"(always absent {_num(scores['presence_always_absent'])})"
  ]


def paired_lines(paired: Mapping) -> list[str]:
  """One line per CoT student: its difference with Instruct and the 95 % intervals."""
  from aotd_jax.projects.toyworld.stats import fmt_interval

  lines = []
  for name, c in paired.items():
    b = c["bootstrap"]
    t = f"; t over seeds {fmt_interval(c['t'])}" if c.get("t") else ""
    lines.append(
      f"{STUDENT_LABELS.get(name, name).split(' (')[0]} - Instruct: "
      f"{fmt_interval(b)} points (95% CI, paired bootstrap over {b['seeds']} seed(s) "
      f"x {b['questions']} questions{t})"
    )
  return lines


def table(rep: Mapping) -> str:
  """The printed summary: students' accuracy table, CoT funnel, experts, grounding, efficiency."""
  header, rows = student_rows(rep)
  c, e, g, x = rep["cot"], rep["experts"], rep["rationale_grounding"], rep["efficiency"]
  n_test = len(rep.get("test_qids", ())) or rep["students"][next(iter(rep["students"]))]["count"]
  lines = [
    f"AoTD toy-world demo ({rep['config'].get('variant')}): accuracy (%) on the held-out "
    f"test split ({n_test} questions, chance 25%)",
    _text_table(header, rows),
    *paired_lines(rep.get("paired") or {}),
    "",
    f"CoTs (train split): {c['questions']} questions -> {c['programs_ok']} programs ran "
    f"-> {c['passed_answer']} right answers -> {c['passed_judge']} passed the judge "
    f"(kept); {c['unfiltered']} unfiltered; gold-program fallbacks: {c['gold_fallbacks']}",
    "experts ("
    + ", ".join(f"{k}: {v}" for k, v in e.get("sources", {}).items())
    + "): "
    + ", ".join(f"{k} {_num(e.get(k))} (random {_num(e.get(k + '_random'))})" for k in EXPERT_KEYS),
    *_encoder_line(e.get("frame_encoder")),
    f"rationale grounding (AoTD student): box IoU {_num(g['box_iou'])}, "
    f"window IoU {_num(g['window_iou'])}",
    f"efficiency ({x['questions']} questions, {x['memory_kind']}): student "
    f"{x['student_s_per_question']:.3f} s/q, {x['student_peak_mb']:.0f} MB; agent "
    f"{x['agent_s_per_question']:.3f} s/q, {x['agent_peak_mb']:.0f} MB -> student "
    f"{x['speedup']:.1f}x faster, {x['memory_ratio']:.1f}x less memory",
    f"total {rep['seconds']:.0f}s",
  ]
  return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------------


def accuracy_png(rep: Mapping) -> bytes:
  """Grouped bars: accuracy per question type (and overall) for each student."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  students = rep["students"]
  types = sorted({t for s in students.values() for t in s["per_type"]}) + ["overall"]
  fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
  width = 0.8 / max(len(students), 1)
  for i, (name, s) in enumerate(students.items()):
    vals = [s["per_type"].get(t, 0.0) for t in types[:-1]] + [s["accuracy"]]
    ax.bar([k + i * width for k in range(len(types))], vals, width, label=name)
  ax.axhline(0.25, color="grey", linestyle="--", linewidth=1, label="chance")
  ax.set_xticks([k + width * (len(students) - 1) / 2 for k in range(len(types))], types)
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 1.18))
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


def efficiency_svg(eff: Mapping) -> str:
  """Two horizontal bar pairs (s/question, peak MB), student vs agent, as inline SVG."""
  rows = [
    ("s / question", eff["student_s_per_question"], eff["agent_s_per_question"]),
    ("peak MB", eff["student_peak_mb"], eff["agent_peak_mb"]),
  ]
  parts = ['<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="520" height="150">']
  for i, (label, student, agent) in enumerate(rows):
    top = 10 + i * 70
    scale = 300 / max(student, agent, 1e-9)
    parts.append(f'<text x="0" y="{top + 12}" font-size="12">{label}</text>')
    for j, (who, v, colour) in enumerate((("student", student, "#2a7"), ("agent", agent, "#c63"))):
      y = top + 18 + j * 22
      parts.append(
        f'<rect x="90" y="{y}" width="{max(v * scale, 1):.1f}" height="18" '
        f'fill="{colour}"><title>{who}: {v:.3f}</title></rect>'
        f'<text x="{95 + v * scale:.1f}" y="{y + 13}" font-size="11">{who} '
        f'{v:.3g}</text>'
      )
  return "".join(parts) + "</svg>"


# -- html ---------------------------------------------------------------------------------------


def _html_table(header, rows) -> str:
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
  body = "".join(
    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
  )
  return f"<table><tr>{head}</tr>{body}</table>"


def _traces(rep: Mapping, workdir: str) -> list[tuple[str, str]]:
  """Renders sample agent traces with the viewer; returns (title, file name) pairs."""
  from aotd_jax.agent import job, viewer

  n = int(rep["config"].get("report", {}).get("trace_samples", 6))
  out = []
  for title, path, name in (
    ("CoT generation (train split)", rep["cot"].get("records"), "traces_cot.html"),
    ("agent on the test split", rep["efficiency"].get("agent_records"), "traces_agent.html"),
  ):
    if path and os.path.exists(path):
      viewer.render_report(
        job.RecordLog(path).load(),
        os.path.join(workdir, name),
        num_samples=n,
        title=f"AoTD demo: {title}",
      )
      out.append((title, name))
  return out


def render_html(rep: Mapping, workdir: str) -> str:
  """Writes `workdir/report.html` (and the trace pages); returns its path."""
  header, rows = student_rows(rep)
  png = base64.b64encode(accuracy_png(rep)).decode()
  c, e, g, x = rep["cot"], rep["experts"], rep["rationale_grounding"], rep["efficiency"]
  funnel = _html_table(
    [
      "questions",
      "programs ran",
      "right answer",
      "passed judge (kept)",
      "unfiltered CoTs",
      "gold fallbacks",
    ],
    [
      [
        c["questions"],
        c["programs_ok"],
        c["passed_answer"],
        c["passed_judge"],
        c["unfiltered"],
        c["gold_fallbacks"],
      ]
    ],
  )
  experts = _html_table(
    ["", *EXPERT_KEYS],
    [
      ["ours"] + [_num(e.get(k)) for k in EXPERT_KEYS],
      ["random"] + [_num(e.get(k + "_random")) for k in EXPERT_KEYS],
    ],
  )
  sources = ", ".join(f"{k}: {v}" for k, v in e.get("sources", {}).items())
  effs = _html_table(
    ["", "s / question", "peak MB"],
    [
      ["student", _num(x["student_s_per_question"]), _num(x["student_peak_mb"], ".0f")],
      ["agent", _num(x["agent_s_per_question"]), _num(x["agent_peak_mb"], ".0f")],
      ["agent / student", _num(x["speedup"], ".2f"), _num(x["memory_ratio"], ".2f")],
    ],
  )
  samples = []
  for name, s in rep["students"].items():
    for r in s.get("rationales", [])[:2]:
      samples.append(
        f"<li><b>{html.escape(name)}</b> {html.escape(r['qid'])}: {html.escape(r['text'])}</li>"
      )
  traces = _traces(rep, workdir)
  trace_html = "".join(
    f'<h3>{html.escape(t)} (<a href="{f}">open</a>)</h3>'
    f'<iframe src="{f}" width="100%" height="600"></iframe>'
    for t, f in traces
  )
  page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>AoTD toy-world demo</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px}}
iframe{{border:1px solid #ccc}}</style></head><body>
<h1>AoTD toy-world demo ({html.escape(str(rep['config'].get('variant')))})</h1>
<p>Accuracy (%) on the held-out test split ({len(rep.get('test_qids', []))} questions; chance 25%).
Total {rep['seconds']:.0f} s.</p>
{_html_table(header, rows)}
<img alt="accuracy per type" src="data:image/png;base64,{png}">
<h2>CoT funnel (train split)</h2>{funnel}
<h2>Experts (sub-task harness, held-out test split)</h2><p>{html.escape(sources)}</p>{experts}
<pre>{html.escape(e.get("table") or "")}</pre>
{"".join(f"<p>{html.escape(line)}</p>" for line in _encoder_line(e.get("frame_encoder")))}
<h2>Rationale grounding (AoTD student)</h2>
<p>box IoU {_num(g['box_iou'])}, window IoU {_num(g['window_iou'])}</p>
<h2>Efficiency (same {x['questions']} test questions, {html.escape(x['memory_kind'])})</h2>
{effs}{efficiency_svg(x)}
<h2>Student rationales (samples)</h2><ul>{''.join(samples)}</ul>
<h2>Agent traces</h2>{trace_html}
</body></html>"""
  path = os.path.join(workdir, "report.html")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(page)
  os.replace(path + ".tmp", path)
  return path


def write(rep: Mapping, workdir: str) -> tuple[str, str]:
  """Writes `report.json` and `report.html` into `workdir`; returns their paths."""
  path = os.path.join(workdir, "report.json")
  with open(path + ".tmp", "w") as f:
    json.dump(rep, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path, render_html(rep, workdir)
