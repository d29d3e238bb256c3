#!/usr/bin/env bash
# The full-size path on a CPU, without the real weights: random ChatGLM3-6B and Whisper-large-v2 in their
# published layouts, at full width and the depth of conf/full_size_check.yaml, through ./run.sh --model_size full
# (stages 2-13: every full-size system and phase, with the full-size configs as they are) on the first utterances
# of the mini corpus's sets, in a directory of its own. Its RESULTS.md is the check: every stage ran. The figures
# in it are a random model's.
#   local/full_size_check.sh                     # after stage 1 (./run.sh --stop_stage 1 builds the mini corpus)
#   local/full_size_check.sh --utterances 16     # more of each set
#   local/full_size_check.sh --ngpu 1 ...        # on a GPU (local/full_size_benchmark.sh: full depth)
set -euo pipefail

workdir=exp/full_size_check  # the check's recipe directory (links to this one's scripts and configs)
models_config=conf/full_size_check.yaml
systems="decoder_only encoder_decoder encoder_decoder_dyngate hybrid"
utterances=8                 # of the training set; half as many of dev and test
ngpu=0                       # 0: the CPU, as a user without a GPU passes it; 1: one GPU, decoding there too

help_message="Usage: $0 [--workdir DIR] [--models_config YAML] [--systems \"...\"] [--utterances N] [--ngpu 0|1]"
. utils/parse_options.sh
. ./path.sh

for dset in train dev test; do
    if [ ! -s "data/${dset}/text" ]; then
        echo "$0: data/${dset} not found: run stage 1 first (./run.sh --stop_stage 1)" >&2
        exit 1
    fi
done
mkdir -p "${workdir}"
for f in run.sh cmd.sh path.sh db.sh conf local utils; do
    ln -sfn "${PWD}/${f}" "${workdir}/${f}"
done
python -m espnet_llm.mini.make_full_size_models --config "${models_config}" --output_dir "${workdir}/downloads"
# a speaker's first utterances, in order, so that the long-form phases have their history
for dset in train dev test; do
    n=$([ "${dset}" = train ] && echo "${utterances}" || echo $(( (utterances + 1) / 2 )))
    head -n "${n}" "data/${dset}/text" > "${workdir}/${dset}.list"
    rm -rf "${workdir}/data/${dset}"
    utils/subset_data_dir.sh --utt-list "${workdir}/${dset}.list" "data/${dset}" "${workdir}/data/${dset}"
done

# the full-size configs as they are, a few steps a phase (2 epochs of about 4 utterances a step: the averaging of
# 2 checkpoints has two to average); on the CPU one run at a time on all the cores, as a user without a GPU runs them
if [ "${ngpu}" -gt 0 ]; then
    device_opts=(--ngpu "${ngpu}" --gpu_inference true --inference_args "--num_workers 0")
else
    device_opts=(--ngpu 0 --inference_args "--allow_large_model_on_cpu true --num_workers 0")
fi
cd "${workdir}"
./run.sh --stage 2 --stop_stage 13 --model_size full --systems "${systems}" --nj "$(nproc)" "${device_opts[@]}" \
    --train_args "--max_epoch 2 --batch_bins 1000000 --num_workers 0 --keep_nbest_models 2 --scheduler_conf warmup_steps=2"
echo "$0: ${workdir}/RESULTS.md: the full-size configs ran stages 2-13 (random weights: the figures mean nothing)"
