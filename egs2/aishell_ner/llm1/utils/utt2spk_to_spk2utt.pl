#!/usr/bin/env bash
# Usage: utils/utt2spk_to_spk2utt.pl [<utt2spk>] > spk2utt   (reads stdin without an argument)
# Kaldi's name and interface; written in bash+python.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir utt2spk-to-spk2utt "$@"
