#!/usr/bin/env bash
# One training run (stage 11) through ESPnet's launcher, with --resume true: a run stopped in its training
# goes on from <output_dir>/checkpoint.pth. Prints the last epoch's validation results.
#
#   local/train.sh [--ngpu 0] [--num_nodes 1] [--threads 1] --train_module <module> <output_dir> -- <options>
#
# <options>: those of the training program (config, data, shapes, ...). Run from the recipe directory.
set -euo pipefail

ngpu=0
num_nodes=1
threads=1      # OMP_NUM_THREADS of the training program
train_module=  # espnet_llm.bin.asr_train, espnet_llm.bin.speech_llm_train

help_message="Usage: $0 [--ngpu ${ngpu}] [--num_nodes ${num_nodes}] [--threads ${threads}] --train_module <module> <output_dir> -- <training options>"

. utils/parse_options.sh
if [ $# -lt 1 ] || [ -z "${train_module}" ]; then
    echo "${help_message}" >&2
    exit 1
fi
dir=$1
shift
[ "${1:-}" = -- ] && shift

. ./path.sh
. ./cmd.sh

name=$(basename "$(dirname "${dir}")")/$(basename "${dir}")  # <system>/<phase>
mkdir -p "${dir}"
# launch.py echoes its whole command line (about 1.6 KB) at INFO: left off the console (its stderr through sed, its
# stdout on fd 3; pipefail keeps its exit code); the rest of what it says, run.pl's progress among it, stays
{
    OMP_NUM_THREADS=${threads} \
    python -m espnet2.bin.launch \
        --cmd "${cuda_cmd}" \
        --log "${dir}/train.log" \
        --ngpu "${ngpu}" \
        --num_nodes "${num_nodes}" \
        --init_file_prefix "${dir}/.dist_init_" \
        --multiprocessing_distributed true -- \
        python -m "${train_module}" --resume true --output_dir "${dir}" "$@" 2>&1 >&3 \
        | sed -u '/(launch:[0-9]*) INFO: .*espnet2\/bin\/launch\.py /d' >&2
} 3>&1
{ grep -h "epoch results" "${dir}/train.log" || true; } | tail -n 1 \
    | sed -e "s#.*INFO: #${name}: #" -e 's/\[train\].*\[valid\]/... [valid]/'
