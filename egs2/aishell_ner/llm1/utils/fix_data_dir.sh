#!/usr/bin/env bash
# Usage: utils/fix_data_dir.sh <data-dir>
# Keeps the utterances present in every per-utterance table, drops malformed and duplicate lines,
# sorts the tables and regenerates spk2utt; reports what it removed, with counts. Originals go to
# <data-dir>/.backup/.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir fix "$@"
