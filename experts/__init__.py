"""The expert tools that generated programs call (Find, trim, Query_Actions, ...).

  tools = experts.make_tools(config)        # {name: callable}, bound to models by config
  clip = experts.VideoClip(frames, fps=8, video_id="v1")
  tools["Find"](clip, "red circle")

`experts.api_docs()` is the tool documentation the program-generation prompt shows.
"""

from experts.backends.protocols import Box, Window
from experts.batching import DEFAULT_BUCKETS, BucketedJit, count_xla_compilations
from experts.cache import ToolCache
from experts.clip import VideoClip
from experts.registry import default_config, make_toolbox, make_tools, selector_section
from experts.tools import (
  TOOL_NAMES,
  Detections,
  ToolError,
  ToolRecord,
  Toolbox,
  api_docs,
  snap_to_choice,
)

__all__ = [
  "Box",
  "Window",
  "DEFAULT_BUCKETS",
  "BucketedJit",
  "count_xla_compilations",
  "ToolCache",
  "VideoClip",
  "default_config",
  "make_toolbox",
  "make_tools",
  "selector_section",
  "TOOL_NAMES",
  "Detections",
  "ToolError",
  "ToolRecord",
  "Toolbox",
  "api_docs",
  "snap_to_choice",
]
