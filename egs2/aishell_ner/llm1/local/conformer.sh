#!/usr/bin/env bash
# ESPnet's Conformer baseline (the run conformer/asr): its part of run.sh's stages 5 and 10-12, as in ESPnet's
# asr.sh. It learns the marked text (text_ner, entity marks as tokens: AISHELL-NER's entity-aware baseline)
# from the audio.
#
#   local/conformer.sh --stage <5|10|11|12> [--option value ...]   # run.sh passes its own options
#
#   5   char token list of the training set's text_ner (entity marks included) -> <token_list>
#   10  collect stats (shapes, feature statistics) -> <expdir>/stats/conformer_asr
#   11  training -> <expdir>/conformer/asr (train.log; resumable)
#   12  decoding of the test sets -> <expdir>/conformer/asr/<inference tag>/<set>/{text,text_ner}: the marked
#       output is the NER output, and without the marks the transcript; with --ctc_weights, the CTC weight is
#       chosen on the validation set first, as the baseline's users tune it (ctc_weight_tuning/ctc<w>/<set>/cer:
#       each weight's CER), and named in the tag
# Run from the recipe directory.
set -euo pipefail

log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"
}

stage=
nj=2                # collect-stats jobs
threads=1           # training threads (OMP_NUM_THREADS)
ngpu=0
num_nodes=1
dumpdir=dump
expdir=exp
train_set=train
valid_set=dev
test_sets="dev test"
token_list=data/token_list/char/tokens.txt
blank="<blank>"
oov="<unk>"
sos_eos="<sos/eos>"
train_config=conf/train_asr_conformer.yaml
train_args=
dry_run=false
inference_config=conf/decode_asr_conformer.yaml
inference_model=valid.acc.ave.pth  # it has no current-utterance accuracy: no history
inference_nj=8
inference_ngpu=0
inference_args=
ctc_weights=       # stage 12: decode --valid_set with each, then the test sets with the one of the lowest CER

help_message="Usage: $0 --stage <5|10|11|12> [--option value ...] (options: see the top of $0)"

. utils/parse_options.sh
if [ $# -gt 0 ] || [ -z "${stage}" ]; then
    echo "${help_message}" >&2
    exit 1
fi

. ./path.sh

dir=${expdir}/conformer/asr
stats_dir=${expdir}/stats/conformer_asr
# ESPnet's asr_train options of the text processing, and the training and validation data
text_opts=(--use_preprocessor true --token_type char --token_list "${token_list}"
           --non_linguistic_symbols none --cleaner none --g2p none)
data_opts=()
for part in train valid; do
    if [ "${part}" = train ]; then dset=${train_set}; else dset=${valid_set}; fi
    data_opts+=(--${part}_data_path_and_name_and_type "${dumpdir}/raw/${dset}/wav.scp,speech,sound"
                --${part}_data_path_and_name_and_type "${dumpdir}/raw/${dset}/text_ner,text,text")
done

case "${stage}" in
5)
    log "Stage 5: char token list: ${dumpdir}/raw/${train_set}/text_ner -> ${token_list}"
    mkdir -p "$(dirname "${token_list}")"
    # Run directly, not through ${train_cmd}: the job runner hands "<blank>:0" to bash unquoted, as Kaldi's does.
    _log=$(dirname "${token_list}")/tokenize_text.log
    if ! python -m espnet2.bin.tokenize_text --token_type char \
            --input "${dumpdir}/raw/${train_set}/text_ner" --output "${token_list}" --field 2- \
            --cleaner none --g2p none --write_vocabulary true \
            --add_symbol "${blank}:0" --add_symbol "${oov}:1" --add_symbol "${sos_eos}:-1" >"${_log}" 2>&1; then
        tail -n 20 "${_log}"
        log "Error: tokenize_text failed; log: ${_log}"
        exit 1
    fi
    python -m espnet_llm.data_prep.summary --token_list "${token_list}"
    ;;
10)
    log "Stage 10: collect stats of conformer/asr (${train_config})"
    # shellcheck disable=SC2086
    local/collect_stats.sh --nj "${nj}" --train_module espnet2.bin.asr_train \
        "${dumpdir}/raw/${train_set}" "${dumpdir}/raw/${valid_set}" "${stats_dir}" -- \
        --config "${train_config}" "${data_opts[@]}" "${text_opts[@]}" ${train_args}
    # ESPnet's text shape with the vocabulary size, as asr.sh writes it
    for part in train valid; do
        awk -v N="$(wc -l <"${token_list}")" '{ print $0 "," N }' \
            "${stats_dir}/${part}/text_shape" >"${stats_dir}/${part}/text_shape.char"
    done
    ;;
11)
    opts=(--config "${train_config}" "${data_opts[@]}" "${text_opts[@]}" --fold_length 80000 --fold_length 150
          --normalize global_mvn --normalize_conf "stats_file=${stats_dir}/train/feats_stats.npz")
    for part in train valid; do
        opts+=(--${part}_shape_file "${stats_dir}/${part}/speech_shape"
               --${part}_shape_file "${stats_dir}/${part}/text_shape.char")
    done
    "${dry_run}" && opts+=(--dry_run true)
    log "Stage 11: $("${dry_run}" && echo "dry run of" || echo training) conformer/asr (${train_config}) on audio," \
        "${ngpu} GPU(s) x ${num_nodes} node(s): ${dir}/train.log"
    # shellcheck disable=SC2086
    local/train.sh --ngpu "${ngpu}" --num_nodes "${num_nodes}" --threads "${threads}" \
        --train_module espnet_llm.bin.asr_train "${dir}" -- "${opts[@]}" ${train_args}
    ;;
12)
    if [ ! -f "${dir}/${inference_model}" ]; then
        log "Error: ${dir}/${inference_model} not found: train conformer/asr first (stage 11)"
        exit 1
    fi
    decode() {  # <decode dir> "<sets>" [more options]: decoded, the marks split off
        # shellcheck disable=SC2086
        local/decode.sh --nj "${inference_nj}" --ngpu "${inference_ngpu}" --inference_module espnet2.bin.asr_inference \
            "${dumpdir}/raw" "$1" "$2" -- --batch_size 1 --asr_train_config "${dir}/config.yaml" \
            --asr_model_file "${dir}/${inference_model}" --config "${inference_config}" ${inference_args} "${@:3}"
        for dset in $2; do
            mv "$1/${dset}/text" "$1/${dset}/text_ner"
            python -m espnet_llm.text.aishell_ner "$1/${dset}/text_ner" "$1/${dset}/text"
        done
    }
    if [ -n "${ctc_weights}" ]; then
        rm -rf "${dir}/ctc_weight_tuning"
        for weight in ${ctc_weights}; do
            log "Stage 12: conformer/asr on ${valid_set} with CTC weight ${weight}"
            decode "${dir}/ctc_weight_tuning/ctc${weight}" "${valid_set}" --ctc_weight "${weight}"
            python -m espnet_llm.bin.score_cer --ref "data/${valid_set}/text" \
                --hyp "${dir}/ctc_weight_tuning/ctc${weight}/${valid_set}/text" \
                --out_dir "${dir}/ctc_weight_tuning/ctc${weight}/${valid_set}/cer" >/dev/null
        done
        best=$(python -m espnet_llm.scoring.ctc_weight_tuning "${dir}/ctc_weight_tuning" "${valid_set}")
        log "Stage 12: conformer/asr decodes with CTC weight ${best}, the lowest CER on ${valid_set}" \
            "(${dir}/ctc_weight_tuning/choice.txt)"
        inference_args+=" --ctc_weight ${best}"
    fi
    decode_dir=${dir}/$(utils/inference_tag.sh "${inference_config}" "${inference_model}" "${inference_args}")
    log "Stage 12: decoding '${test_sets}' with conformer/asr (${inference_config}), ${inference_nj} job(s) per set:" \
        "${decode_dir}/<set>/logdir/inference.*.log"
    decode "${decode_dir}" "${test_sets}"
    ;;
*)
    echo "$0: --stage must be 5, 10, 11 or 12, got '${stage}'" >&2
    exit 1
    ;;
esac
