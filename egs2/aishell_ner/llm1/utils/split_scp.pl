#!/usr/bin/env bash
# Usage: utils/split_scp.pl [--utt2spk=<utt2spk>] <in.scp> <out1.scp> ... <outN.scp>
# Splits a table into N contiguous parts of even size (speakers kept whole with --utt2spk).
# Kaldi's name and interface, kept so that ESPnet-style stages can call it; written in bash+python.
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../../.." && pwd)  # the repository, for espnet_llm
PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}" exec python3 -m espnet_llm.data_prep.kaldi_dir split-scp "$@"
