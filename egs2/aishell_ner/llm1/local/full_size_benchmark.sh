#!/usr/bin/env bash
# On one GPU, one command: the full-size path at full depth with random weights in the published layouts
# (ChatGLM3-6B, 12 GB; Whisper-large-v2's large-v2.pt, 6 GB), then its speed against docs/benchmarks.md's plan.
#  1. local/full_size_check.sh --ngpu 1: ./run.sh --model_size full, stages 2-13, the decoder-only and
#     encoder-decoder systems through their three phases, a few training steps each, decoding on the GPU;
#     the step time and peak memory of each run from ESPnet's train.log, the decoding RTF from its logs;
#  2. espnet_llm.benchmarks.speech_llm --size full --device cuda: training utterances/s, MFU and peak memory at
#     batch 16, decoding RTF at batch 1 and 32 (the plan's targets: MFU >= 40 %, RTF <= 0.003 at batch 32, a step
#     in 40 GB).
# Writes exp/full_size_benchmark/figures.md; after stage 1 (./run.sh --stop_stage 1).
set -euo pipefail

workdir=exp/full_size_benchmark
utterances=64
help_message="Usage: $0 [--workdir DIR] [--utterances N]"
. utils/parse_options.sh
. ./path.sh

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "$0: no GPU (nvidia-smi lists none): local/full_size_check.sh runs the full-size path on the CPU" >&2
    exit 1
fi
local/full_size_check.sh --workdir "${workdir}" --models_config conf/full_size_benchmark.yaml \
    --systems "decoder_only encoder_decoder" --utterances "${utterances}" --ngpu 1
{
    echo "# Full size on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), $(date +%F)"
    echo
    echo "## The recipe (${utterances} training utterances, full depth, random weights)"
    python -m espnet_llm.benchmarks.recipe_logs "${workdir}"/exp/{decoder_only,encoder_decoder}/{short,long,cot}
    echo
    echo "## Training and decoding speed"
    python -m espnet_llm.benchmarks.speech_llm --size full --device cuda --batch_size 16 --steps 10 \
        --decode_batch_sizes 1 32
} | tee "${workdir}/figures.md"
