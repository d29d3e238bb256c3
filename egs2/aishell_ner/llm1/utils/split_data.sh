#!/usr/bin/env bash
# Usage: utils/split_data.sh [--per-utt] <data-dir> <num-to-split>
# Writes <data-dir>/split<N>/<1..N> (per speaker, default) or <data-dir>/split<N>utt/<1..N>:
# contiguous parts of even size.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir split "$@"
