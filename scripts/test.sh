#!/usr/bin/env bash
# Set up (first run only), lint, and run the default test suite. Extra arguments go to pytest.
source "$(dirname "$0")/bootstrap.sh"
ruff check .
python -m pytest "$@"
