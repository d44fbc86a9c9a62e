#!/usr/bin/env bash
# Set up (first run only) and run the main job: a short fit of BitTransformerLM on the built-in corpus.
source "$(dirname "$0")/bootstrap.sh"
python -m bit_transformer.demo "$@"
