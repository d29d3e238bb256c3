#!/usr/bin/env bash
# The name of a decoding directory, as ESPnet's asr.sh names <asr_exp>/<inference_tag>: the decode config's name,
# the decoding options given on top of it, and the model file decoded.
#
#   utils/inference_tag.sh <decode_config> <model_file> [<options>]
#   utils/inference_tag.sh conf/decode_speech_llm.yaml valid.acc_current.ave.pth "--beam_size 1"
#     -> decode_speech_llm_beam_size1_valid.acc_current.ave
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "Usage: $0 <decode_config> <model_file> [<options>]" >&2
    exit 1
fi
config=$(basename "$1")
config=${config%.*}
model=$(basename "$2")
# the options as asr.sh writes them: "--beam_size 1 --nbest=2" -> "_beam_size1_nbest2"
options=$(echo "${3:-}" | sed -e "s/--/_/g" -e "s/[ |=/]//g")
echo "decode_${config#decode_}${options}_${model%.*}"
