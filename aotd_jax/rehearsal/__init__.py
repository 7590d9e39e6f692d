"""The rehearsal: the real path (HF checkpoints, STAR / NExT-QA files, mp4s, an LLM server,
the production configs and launchers) run end to end at toy sizes (`python -m launch.rehearse`).

Modules: `checkpoints` (tiny random checkpoints in the real formats), `datasets` (STAR JSON,
NExT-QA CSV + map, mp4s), `stub_server` (an OpenAI-compatible server), `stages` (one
launcher command per stage and the checks of its outputs), `runner` (runs the stages, writes
`rehearsal.json`).
"""
