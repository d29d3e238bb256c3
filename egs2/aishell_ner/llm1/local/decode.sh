#!/usr/bin/env bash
# Decoding of one run's test sets (stage 12): each set's keys split into --nj jobs through ${decode_cmd}, and the
# jobs' 1best_recog/{text,token,score,text_ner} merged into <decode_dir>/<set>/, as asr.sh lays out
# <asr_exp>/<inference_tag>/<set> (utils/inference_tag.sh names <decode_dir>). <set>/inference_options: the program
# and its options, one a line (RESULTS.md names the decode config, beam and model file from it). On the CPU the sets are
# decoded at the same time (with small models the start of each job takes longer than its decoding); with
# --ngpu 1, through ${cuda_cmd} (cmd.sh), one set after the other, each job on a GPU of its own (utils/run.pl
# --gpu: job i on GPU i, jobs beyond the GPUs wait for theirs), so that no two jobs share a GPU.
#
#   local/decode.sh [--nj 1] [--ngpu 0] [--feats_dir <dir>] [--extra_entries "<file>,<name>,<type> ..."]
#       --inference_module <module> <data_root> <decode_dir> "<sets>" -- <options>
#
# The speech of set <set>: <data_root>/<set>/wav.scp, or with --feats_dir <dir>/<set>/feats.scp (Whisper
# features of stage 6); --extra_entries: more files of <data_root>/<set> the program reads. <options>: those of
# the inference program (model, config, ...). Run from the recipe directory.
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

nj=1
ngpu=0
feats_dir=
extra_entries=
inference_module=  # espnet2.bin.asr_inference, espnet_llm.bin.speech_llm_inference

help_message="Usage: $0 [--nj ${nj}] [--ngpu ${ngpu}] [--feats_dir <dir>] [--extra_entries <entries>] --inference_module <module> <data_root> <decode_dir> \"<sets>\" -- <options>"

. utils/parse_options.sh
if [ $# -lt 3 ] || [ -z "${inference_module}" ]; then
    echo "${help_message}" >&2
    exit 1
fi
data_root=$1
decode_root=$2
sets=$3
shift 3
[ "${1:-}" = -- ] && shift

. ./path.sh
. ./cmd.sh
if [ "${ngpu}" -gt 0 ]; then cmd=${cuda_cmd}; else cmd=${decode_cmd}; fi

decode_set() {  # <set> <options>
    local dset=$1 data=${data_root}/$1 decode_dir=${decode_root}/$1
    local logdir=${decode_dir}/logdir speech=${data_root}/$1/wav.scp,speech,sound entries=() entry f n _nj
    shift
    if [ -n "${feats_dir}" ]; then
        speech=${feats_dir}/${dset}/feats.scp,speech,kaldi_ark  # (frames, D) float16 arrays, read as float32
    fi
    for entry in ${extra_entries}; do entries+=(--data_path_and_name_and_type "${data}/${entry}"); done
    _nj=$(( nj < $(wc -l <"${data}/wav.scp") ? nj : $(wc -l <"${data}/wav.scp") ))
    rm -rf "${decode_dir}"
    mkdir -p "${logdir}"
    printf '%s\n' "${inference_module}" "$@" >"${decode_dir}/inference_options"
    python -m espnet_llm.data_prep.kaldi_dir split-keys "${data}/wav.scp" "${_nj}" "${logdir}/keys"
    ${cmd} --gpu "${ngpu}" JOB=1:"${_nj}" "${logdir}/inference.JOB.log" \
        python -m "${inference_module}" --ngpu "${ngpu}" \
            --data_path_and_name_and_type "${speech}" "${entries[@]}" \
            --key_file "${logdir}/keys.JOB.scp" --output_dir "${logdir}/output.JOB" "$@"
    # under a temporary name, then renamed: a run killed while merging leaves no half-written file to score
    for f in text token score text_ner; do
        if [ -f "${logdir}/output.1/1best_recog/${f}" ]; then
            for n in $(seq "${_nj}"); do
                cat "${logdir}/output.${n}/1best_recog/${f}"
            done | sort -k1,1 >"${decode_dir}/${f}.tmp"
            mv "${decode_dir}/${f}.tmp" "${decode_dir}/${f}"
        fi
    done
    log "decoded ${dset}: $(wc -l <"${decode_dir}/text") utterances -> ${decode_dir}/text"
}

pids=()
failed=0
for dset in ${sets}; do
    if [ "${ngpu}" -gt 0 ]; then
        decode_set "${dset}" "$@" || failed=$(( failed + 1 ))
    else
        decode_set "${dset}" "$@" &
        pids+=($!)
    fi
done
for pid in "${pids[@]}"; do
    wait "${pid}" || failed=$(( failed + 1 ))
done
if [ "${failed}" -gt 0 ]; then
    log "Error: decoding ${failed} set(s) into ${decode_root} failed (see the run.pl messages above)"
    exit 1
fi
