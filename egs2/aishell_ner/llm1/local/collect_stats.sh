#!/usr/bin/env bash
# ESPnet's collect-stats of one run (stage 10): the keys of the training and validation sets split into
# --nj parts (fewer if a set has fewer keys), the training program run with --collect_stats true on each
# part through ${train_cmd} (cmd.sh), and the parts' statistics aggregated into <stats_dir>.
#
#   local/collect_stats.sh [--nj 2] --train_module <module> <train_dir> <valid_dir> <stats_dir> -- <options>
#
# <options>: those of the training program (config, data, ...). Run from the recipe directory.
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

nj=2
train_module=  # espnet2.bin.asr_train, espnet_llm.bin.speech_llm_train

help_message="Usage: $0 [--nj ${nj}] --train_module <module> <train_dir> <valid_dir> <stats_dir> -- <training options>"

. utils/parse_options.sh
if [ $# -lt 3 ] || [ -z "${train_module}" ]; then
    echo "${help_message}" >&2
    exit 1
fi
train_dir=$1
valid_dir=$2
stats_dir=$3
shift 3
[ "${1:-}" = -- ] && shift

. ./path.sh
. ./cmd.sh

for scp in "${train_dir}/wav.scp" "${valid_dir}/wav.scp"; do  # at most a job a key
    nj=$(( nj < $(wc -l <"${scp}") ? nj : $(wc -l <"${scp}") ))
done
logdir=${stats_dir}/logdir
log "collect stats in ${nj} job(s): ${logdir}/stats.*.log"
rm -rf "${stats_dir}"
mkdir -p "${logdir}"
python -m espnet_llm.data_prep.kaldi_dir split-keys "${train_dir}/wav.scp" "${nj}" "${logdir}/train"
python -m espnet_llm.data_prep.kaldi_dir split-keys "${valid_dir}/wav.scp" "${nj}" "${logdir}/valid"
${train_cmd} JOB=1:"${nj}" "${logdir}/stats.JOB.log" \
    python -m "${train_module}" --collect_stats true "$@" \
        --train_shape_file "${logdir}/train.JOB.scp" --valid_shape_file "${logdir}/valid.JOB.scp" \
        --output_dir "${logdir}/stats.JOB"
# shellcheck disable=SC2046
python -m espnet2.bin.aggregate_stats_dirs --output_dir "${stats_dir}" \
    $(for n in $(seq "${nj}"); do echo "--input_dir ${logdir}/stats.${n}"; done)
