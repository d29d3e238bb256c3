#!/usr/bin/env bash
# Scoring of one run's decoding (stage 13): for each set, sclite CER of decode_<set>/text (entity marks
# removed) and, where the run wrote text_ner, NER precision, recall and F1 with the error breakdown.
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

for dset in ${sets}; do
    data=${ref_root}/${dset}
    decode_dir=${run_dir}/decode_${dset}
    log "Stage 13: scoring ${decode_dir}"
    python -m espnet_llm.bin.score_cer --ref "${data}/text" --hyp "${decode_dir}/text" \
        --out_dir "${decode_dir}/score_cer" | tail -n 1
    rm -rf "${decode_dir}/score_ner"
    if [ -f "${decode_dir}/text_ner" ]; then
        python -m espnet_llm.bin.score_ner --ref "${data}/text_ner" --hyp "${decode_dir}/text_ner" \
            --out_dir "${decode_dir}/score_ner" | sed -n 1p  # the counts; tables: result.txt
    fi
done
