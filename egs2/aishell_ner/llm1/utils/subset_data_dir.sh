#!/usr/bin/env bash
# Usage: utils/subset_data_dir.sh --utt-list <list> <src-dir> <dest-dir>
#        utils/subset_data_dir.sh --spk-list <list> <src-dir> <dest-dir>
# Copies the utterances named in the first column of <list> (or spoken by its speakers).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir subset "$@"
