#!/usr/bin/env bash
# Builds the bundled mini corpus: real AISHELL-NER dev sentences spoken by espeak-ng voices, in the
# AISHELL-1 layout with AISHELL-NER transcript files; skipped when already built with the same seed.
# See espnet_llm/mini/corpus.py.
set -euo pipefail

output_dir=downloads/mini_aishell
seed=0
nj=2

help_message="Usage: $0 [--output_dir downloads/mini_aishell] [--seed 0] [--nj 2]"

. utils/parse_options.sh

python -m espnet_llm.mini.corpus --output_dir "${output_dir}" --seed "${seed}" --nj "${nj}"
