#!/usr/bin/env bash
# Usage: utils/validate_data_dir.sh [--no-text] [--no-audio-check] <data-dir>
# Checks a Kaldi-style data directory (sorted unique ids, the same utterances in every table,
# spk2utt against utt2spk, text_ner against text and entities, utt2history, audio files present).
# Exits 1 listing each problem with its file and line or utterance id. --no-feats is accepted
# and ignored (Kaldi's option; this project has no feats.scp).
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
args=()
for a in "$@"; do [ "${a}" = "--no-feats" ] || args+=("${a}"); done
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir validate "${args[@]}"
