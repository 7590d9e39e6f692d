#!/bin/sh
echo "bazel coverage is not set up offline (tools/bazel/no_coverage)" >&2
exit 1
