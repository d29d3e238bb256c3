#!/usr/bin/env bash
# Scoring of one run's decodings (stage 13): for each decoding directory <run_dir>/decode_*/ (local/decode.sh) and
# each set, sclite CER of <set>/text (entity marks removed) and, where the run wrote text_ner, NER precision, recall
# and F1 with the error breakdown; <set>_other_speech (the listening control), CER against <set>'s references.
#
#   local/score.sh <ref_root> <run_dir> "<sets>"
#
# The references: <ref_root>/<set>/{text,text_ner}. Run from the recipe directory.
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

help_message="Usage: $0 <ref_root> <run_dir> \"<sets>\""

. utils/parse_options.sh
if [ $# -ne 3 ]; then
    echo "${help_message}" >&2
    exit 1
fi
ref_root=$1
run_dir=$2
sets=$3

. ./path.sh

decodings=("${run_dir}"/decode_*/)
if [ ! -d "${decodings[0]}" ]; then
    log "Error: no decoding under ${run_dir}: stage 12 writes <run_dir>/<inference tag>/<set>/text"
    exit 1
fi
for decoding in "${decodings[@]}"; do
    for dset in ${sets}; do
        data=${ref_root}/${dset}
        decode_dir=${decoding%/}/${dset}
        log "Stage 13: scoring ${decode_dir}"
        python -m espnet_llm.bin.score_cer --ref "${data}/text" --hyp "${decode_dir}/text" \
            --out_dir "${decode_dir}/score_cer" | tail -n 1
        rm -rf "${decode_dir}/score_ner"
        if [ -f "${decode_dir}/text_ner" ]; then
            python -m espnet_llm.bin.score_ner --ref "${data}/text_ner" --hyp "${decode_dir}/text_ner" \
                --out_dir "${decode_dir}/score_ner" | sed -n 1p  # the counts; tables: result.txt
        fi
        if [ -f "${decode_dir}_other_speech/text" ]; then  # the listening control, against the set's own transcripts
            python -m espnet_llm.bin.score_cer --ref "${data}/text" --hyp "${decode_dir}_other_speech/text" \
                --out_dir "${decode_dir}_other_speech/score_cer" | tail -n 1
        fi
    done
done
