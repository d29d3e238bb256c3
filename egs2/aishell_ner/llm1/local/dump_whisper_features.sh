#!/usr/bin/env bash
# Dump the frozen Whisper encoder's output of a data directory once, in N parallel jobs
# (espnet_llm/bin/dump_whisper_features.py), so that training reads it instead of running Whisper.
#
#   local/dump_whisper_features.sh [--nj 4] [--ngpu 1] [--batch_size 16] <data_dir> <whisper_model_path> <out_dir>
#
# <data_dir>/wav.scp is split into N parts (kaldi_dir split-keys); part n is dumped into <out_dir>/parts/n
# through ${cuda_cmd} (cmd.sh), with its log in <out_dir>/logs/dump.n.log; then <out_dir>/feats.scp,
# feats_shape, utt2num_frames and failed (utterances that could not be dumped, with the reason) are the
# parts' files merged and sorted. Resumable: in a rerun each part's job skips the chunks it has already
# committed (a finished part only re-merges). A dump is resumed only from the same input (the audio list,
# the model and --nj, recorded in <out_dir>/inputs): one of other input is removed and dumped again.
# Run from the recipe directory (path.sh and cmd.sh are sourced).
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

nj=4
ngpu=0              # GPUs per job: 0 (CPU, float32) or 1 (float16)
batch_size=16       # utterances per encoder batch
pad_to_30s=false    # encode in Whisper's 30-s windows (must match the training config's pad_to_30s)

help_message="Usage: $0 [--nj ${nj}] [--ngpu ${ngpu}] [--batch_size ${batch_size}] [--pad_to_30s false] <data_dir> <whisper_model_path> <out_dir>"

. utils/parse_options.sh
if [ $# -ne 3 ]; then
    echo "${help_message}" >&2
    exit 1
fi
data_dir=$1
model_path=$2
out_dir=$3

. ./path.sh
. ./cmd.sh

if [ ! -f "${data_dir}/wav.scp" ]; then
    log "Error: ${data_dir}/wav.scp not found: run stages 3-4 of run.sh first"
    exit 1
fi
_inputs=$(printf 'model_path %s\npad_to_30s %s\nnj %s\n' "$(readlink -f "${model_path}")" "${pad_to_30s}" "${nj}"
    { cat "${data_dir}/wav.scp" "${data_dir}/utt2num_samples" "${model_path}"/{config.json,source.json} 2>/dev/null \
        || true; } | md5sum)
if [ -d "${out_dir}" ] && [ "$(cat "${out_dir}/inputs" 2>/dev/null)" != "${_inputs}" ]; then
    log "${out_dir} was dumped from other audio, model or --nj: removed, dumping again"
    rm -rf "${out_dir}"
fi
mkdir -p "${out_dir}"
echo "${_inputs}" >"${out_dir}/inputs"

_nj=$(( nj < $(wc -l <"${data_dir}/wav.scp") ? nj : $(wc -l <"${data_dir}/wav.scp") ))
_split=${out_dir}/split${_nj}
mkdir -p "${_split}" "${out_dir}/logs"
python -m espnet_llm.data_prep.kaldi_dir split-keys "${data_dir}/wav.scp" "${_nj}" "${_split}/wav"

_opts="--batch_size ${batch_size} --ngpu ${ngpu}"
if [ -f "${data_dir}/utt2num_samples" ]; then
    _opts+=" --utt2num_samples ${data_dir}/utt2num_samples"  # lengths for sorting, instead of the file headers
fi
if "${pad_to_30s}"; then
    _opts+=" --pad_to_30s"
fi
log "dumping Whisper features of ${data_dir} with ${model_path} in ${_nj} job(s): ${out_dir}/logs/dump.*.log"
# shellcheck disable=SC2086
if ! ${cuda_cmd} --gpu "${ngpu}" JOB=1:"${_nj}" "${out_dir}/logs/dump.JOB.log" \
        python -m espnet_llm.bin.dump_whisper_features --wav_scp "${_split}/wav.JOB.scp" \
            --model_path "${model_path}" --output_dir "${out_dir}/parts/JOB" ${_opts}; then
    tail -n 5 "${out_dir}"/logs/dump.*.log
    log "Error: the Whisper feature dump of ${data_dir} failed (logs: ${out_dir}/logs/dump.*.log);" \
        "run it again (run.sh: stage 6) to go on from the last finished chunk"
    exit 1
fi

# each file written under a temporary name and renamed, feats.scp last: it is what tells the later stages that
# the dump is complete, so a run killed here leaves none of them half-written
for f in failed utt2num_frames feats_shape feats.scp; do
    for n in $(seq "${_nj}"); do
        cat "${out_dir}/parts/${n}/${f}"
    done | sort -k1,1 >"${out_dir}/${f}.tmp"
    mv "${out_dir}/${f}.tmp" "${out_dir}/${f}"
done
_failed=$(wc -l <"${out_dir}/failed")
log "${out_dir}: $(wc -l <"${out_dir}/feats.scp") utterances dumped, ${_failed} failed"
if [ "${_failed}" -gt 0 ]; then
    log "failed utterances (all in ${out_dir}/failed; training and decoding read them as empty, skip and count them):"
    head -n 20 "${out_dir}/failed"
fi
