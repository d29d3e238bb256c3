#!/usr/bin/env bash
# Audio formatting of one data directory (stage 3): every utterance of <src>/wav.scp read (files or sox
# pipes) and written as a <fs> Hz 16-bit mono wav under <dst>/data, in --nj jobs through ${train_cmd}
# (cmd.sh); <dst> is <src> with the new wav.scp and utt2num_samples, replaced only once complete. Utterances
# that cannot be read are reported by id, counted and left out.
#
#   local/format_audio.sh [--nj 2] [--fs 16000] <src> <dst>
#
# Run from the recipe directory.
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

nj=2
fs=16000

help_message="Usage: $0 [--nj ${nj}] [--fs ${fs}] <src data dir> <dst data dir>"

. utils/parse_options.sh
if [ $# -ne 2 ]; then
    echo "${help_message}" >&2
    exit 1
fi
src=$1
dst=${2%/}

. ./path.sh
. ./cmd.sh

# Built in ${tmp} and renamed to <dst> once complete: a run killed on the way leaves <dst> as it was (the earlier
# output, whose audio stage 4's data directories name), never half-written, and a rerun starts over.
tmp=${dst}.tmp
logdir=${tmp}/logs
rm -rf "${tmp}"
utils/copy_data_dir.sh "${src}" "${tmp}"
mkdir -p "${logdir}"
nutt=$(wc -l <"${src}/wav.scp")
if [ "${nutt}" -eq 0 ]; then
    log "Error: ${src} has no utterances"
    exit 1
fi
nj=$(( nj < nutt ? nj : nutt ))
python -m espnet_llm.data_prep.kaldi_dir split-keys "${src}/wav.scp" "${nj}" "${logdir}/wav"
log "formatting ${nutt} utterances of ${src##*/} in ${nj} job(s): ${logdir}/format_audio.*.log"
${train_cmd} JOB=1:"${nj}" "${logdir}/format_audio.JOB.log" \
    python -m espnet_llm.data_prep.format_audio --fs "${fs}" "${logdir}/wav.JOB.scp" \
        "${tmp}/data/format.JOB" "${logdir}/formatted.JOB.scp" "${logdir}/utt2num_samples.JOB"
# the audio paths name <dst>, where the files are once ${tmp} is renamed
for n in $(seq "${nj}"); do cat "${logdir}/formatted.${n}.scp"; done \
    | awk -v from="${tmp}/data/" -v to="${dst}/data/" \
        '{ if (index($2, from) == 1) $2 = to substr($2, length(from) + 1); print }' >"${tmp}/wav.scp"
for n in $(seq "${nj}"); do cat "${logdir}/utt2num_samples.${n}"; done >"${tmp}/utt2num_samples"
nfailed=$(cat "${logdir}"/format_audio.*.log | grep -c "^ERROR" || true)
if [ "${nfailed}" -gt 0 ]; then
    log "WARNING: ${nfailed} utterance(s) of ${src##*/} could not be read and are left out:"
    grep -h "^ERROR" "${logdir}"/format_audio.*.log | head -n 5
fi
grep -h "^formatted" "${logdir}"/format_audio.*.log
utils/fix_data_dir.sh "${tmp}"
rm -rf "${dst}"
mv "${tmp}" "${dst}"
