#!/usr/bin/env bash
# Usage: utils/copy_data_dir.sh [--utt-prefix <p>] [--spk-prefix <p>] <src-dir> <dest-dir>
# Copies a data directory, optionally prefixing utterance and speaker ids.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir copy "$@"
