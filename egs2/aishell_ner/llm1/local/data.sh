#!/usr/bin/env bash
# Stage 1: AISHELL-1 audio + AISHELL-NER transcripts -> data/{train,dev,test} (Kaldi style) with
# wav.scp utt2spk spk2utt text text_ner entities utt2history. With no AISHELL-1 root, it builds the
# bundled mini corpus under downloads/mini_aishell/ (once per seed) and prepares that instead.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh:${BASH_LINENO[0]}) $*"; }

aishell_root=      # openslr 33 data_aishell (or its parent); empty: the mini corpus
ner_transcripts=   # AISHELL-NER: the combined file or the train/dev/test files (space separated)
history_k=3        # utt2history lists this many previous utterances of the same speaker
nj=2               # parallel jobs (tarball unpacking, mini-corpus synthesis)
download_dir=      # fetch openslr 33 data_aishell.tgz here when aishell_root is empty (needs a network)
mini_dir=downloads/mini_aishell
mini_seed=0
output_dir=data

help_message="Usage: $0 [--aishell_root DIR] [--ner_transcripts 'FILE ...'] [--history_k K] [--nj N]
  [--download_dir DIR] [--mini_dir DIR] [--mini_seed S] [--output_dir data]"

. utils/parse_options.sh
. ./path.sh

if [ -z "${aishell_root}" ] && [ -z "${download_dir}" ]; then
    if [ -n "${ner_transcripts}" ]; then
        log "no aishell_root: using the mini corpus and its own AISHELL-NER files, not ${ner_transcripts}"
    fi
    log "mini corpus: ${mini_dir} (seed ${mini_seed})"
    local/make_mini_corpus.sh --output_dir "${mini_dir}" --seed "${mini_seed}" --nj "${nj}"
    aishell_root=${mini_dir}/data_aishell
    ner_transcripts="${mini_dir}/aishell_ner/aishell_ner_transcript.train.txt"
    ner_transcripts+=" ${mini_dir}/aishell_ner/aishell_ner_transcript.dev.txt"
    ner_transcripts+=" ${mini_dir}/aishell_ner/aishell_ner_transcript.test.txt"
elif [ -z "${ner_transcripts}" ]; then
    log "ERROR: the AISHELL-1 corpus needs the AISHELL-NER transcripts: set AISHELL_NER in db.sh (or pass --ner_transcripts)" >&2
    exit 1
fi

log "preparing ${output_dir}/{train,dev,test} from ${aishell_root:-${download_dir}}"
# shellcheck disable=SC2086  # ner_transcripts is a list of files
python -m espnet_llm.data_prep.aishell \
    ${aishell_root:+--aishell_root "${aishell_root}"} \
    ${download_dir:+--download_dir "${download_dir}"} \
    --ner_transcripts ${ner_transcripts} \
    --output_dir "${output_dir}" --nj "${nj}"

for x in train dev test; do
    python -m espnet_llm.data_prep.history "${output_dir}/${x}" --k "${history_k}"
done
log "done"
