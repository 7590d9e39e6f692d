"""The toy world as a project: AoTD's experiment in miniature on rendered clips of shapes.

  world, render, questions   the world generator: clips, ground truth, STAR-format questions
  object_states              the frame encoder's per-name (object, action) head, saved and loaded
  vision_experts, object_encoder, language_experts, program_generator, qa_expert
                             the five expert trainers (detector, grounder, frame encoder,
                             program generator, video QA)
  agent, common, efficiency, report, run
                             the demo orchestration (`run.run`, launched by `launch/demo.py`)

Its configs are `configs/toyworld/{demo,cot,distill}.py`.
"""
