#!/usr/bin/env bash
# Set up (first run only), then run the main job: the whole playbook at smoke scale on the built-in
# corpus, driven through the MCP server exactly as an agent would. Extra arguments go to the runner
# (e.g. --phase 1, --task A, --scale full).
source "$(dirname "$0")/bootstrap.sh"
python -m playbook run --scale smoke "$@"
