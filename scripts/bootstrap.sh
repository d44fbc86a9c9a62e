#!/usr/bin/env bash
# Create ./.venv (once) and install the project into it. Sourced by the other scripts.
# torch==2.13.0 goes first: on these machines it is a CPU build that lies on disk, and once it is
# installed the project's `torch` range is satisfied, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BT_VENV:-$root/.venv}"
stamp="$venv/.bt-installed-$(sha1sum "$root/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
