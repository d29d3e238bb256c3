#!/usr/bin/env bash
# Usage: utils/combine_data.sh <dest-dir> <src-dir1> <src-dir2> ...
# Concatenates data directories (tables present in every source); a repeated utterance id is an error.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir combine "$@"
