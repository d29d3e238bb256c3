#!/usr/bin/env bash
# Chinese ASR and NER with a Whisper encoder and the ChatGLM3 LLM (Li et al., Interspeech 2024) on
# AISHELL-1 + AISHELL-NER, or on the bundled mini corpus when db.sh names no corpus.
#   ./run.sh                                 # everything, on the mini corpus unless db.sh says otherwise
#   ./run.sh --stage 1 --stop_stage 5        # the data stages only
set -e
set -u
set -o pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
SECONDS=0

. ./db.sh

# General
stage=1               # first stage to run
stop_stage=10000      # last stage to run
nj=2                  # parallel jobs of the data stages
python=python3        # the python of tools/venv once path.sh is sourced
dumpdir=dump          # formatted data directories
expdir=exp            # experiments

# Data preparation (stage 1)
aishell_root="${AISHELL}"         # data_aishell/ of AISHELL-1; empty: build and use the mini corpus
ner_transcripts="${AISHELL_NER}"  # AISHELL-NER transcript file(s), space-separated
local_data_opts=                  # more options for local/data.sh
history_k=3                       # historical context: ids of the previous K utterances of the speaker
train_set=train
valid_set=dev
test_sets="dev test"

# Audio (stages 2-4)
speed_perturb_factors=  # e.g. "0.9 1.0 1.1" on AISHELL-1; empty (off) for the mini corpus
fs=16000                # sample rate of the formatted audio: Whisper's
min_wav_duration=0.1    # seconds; shorter training/validation utterances are removed
max_wav_duration=30     # seconds; longer ones are removed (Whisper's encoder takes at most 30 s)

# Token lists (stage 5)
token_listdir=data/token_list
blank="<blank>"
oov="<unk>"
sos_eos="<sos/eos>"

help_message=$(cat <<EOF
Usage: $0 [--stage <stage>] [--stop_stage <stop_stage>] [--option value ...]

Stages:
  1  data preparation: data/{train,dev,test} from AISHELL-1 + AISHELL-NER (db.sh),
     or from the bundled mini corpus, built under downloads/, when db.sh names no corpus
  2  speed perturbation of the training set (--speed_perturb_factors; off when empty)
  3  audio formatting: data/<set> -> ${dumpdir}/raw/org/<set> (${fs} Hz 16-bit mono wav, utt2num_samples)
  4  length filtering: ${dumpdir}/raw/org/<set> -> ${dumpdir}/raw/<set> (training and validation sets;
     test sets are copied whole and their out-of-limit utterances counted)
  5  char token list of text_ner (entity marks included) for the Conformer baseline

Options (--foo_bar and --foo-bar are the same; defaults in brackets):
  --stage, --stop_stage       stages to run [${stage}, ${stop_stage}]
  --nj                        parallel jobs of the data stages [${nj}]
  --aishell_root              AISHELL-1 data_aishell/; empty = mini corpus [db.sh: '${AISHELL}']
  --ner_transcripts           AISHELL-NER transcript file(s) [db.sh: '${AISHELL_NER}']
  --local_data_opts           more options for local/data.sh ['${local_data_opts}']
  --history_k                 previous utterances kept as historical context [${history_k}]
  --train_set, --valid_set, --test_sets   data set names [${train_set}, ${valid_set}, '${test_sets}']
  --speed_perturb_factors     e.g. "0.9 1.0 1.1" ['${speed_perturb_factors}']
  --min_wav_duration, --max_wav_duration  limits of stage 4 in seconds [${min_wav_duration}, ${max_wav_duration}]
  --dumpdir, --expdir         output directories [${dumpdir}, ${expdir}]
  --config <file>             read options from a file of name=value lines
EOF
)

. utils/parse_options.sh || exit 1
if [ $# -gt 0 ]; then
    echo "$0: unexpected argument(s): $*" >&2
    echo "${help_message}" >&2
    exit 1
fi

. ./path.sh
. ./cmd.sh

char_token_list=${token_listdir}/char/tokens.txt

# The data sets, each once, in the order train, valid, tests.
data_sets() {
    echo "${train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' '
}

require_sox() {
    if ! command -v sox >/dev/null 2>&1; then
        log "Error: sox not found; stage ${1} needs it. Run tools/setup.sh (it installs Debian's sox), or: apt-get install sox"
        exit 1
    fi
}

# The historical context must name only utterances of the same directory: regenerate it
# whenever a stage adds or removes utterances.
make_history() {
    ${python} -m espnet_llm.data_prep.history "$1" --k "${history_k}"
}

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    if [ -n "${aishell_root}" ]; then
        log "Stage 1: data preparation from ${aishell_root} and '${ner_transcripts}'"
    else
        log "Stage 1: data preparation from the mini corpus (no AISHELL in db.sh or --aishell_root)"
    fi
    # shellcheck disable=SC2086
    local/data.sh --aishell_root "${aishell_root}" --ner_transcripts "${ner_transcripts}" \
        --history_k "${history_k}" --nj "${nj}" ${local_data_opts}
    for dset in $(data_sets); do
        utils/validate_data_dir.sh "data/${dset}"
    done
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    if [ -n "${speed_perturb_factors}" ]; then
        log "Stage 2: speed perturbation: data/${train_set} -> data/${train_set}_sp (factors ${speed_perturb_factors})"
        require_sox 2
        ${python} -m espnet_llm.data_prep.speed_perturb --factors "${speed_perturb_factors}" \
            "data/${train_set}" "data/${train_set}_sp"
        make_history "data/${train_set}_sp"
        utils/validate_data_dir.sh "data/${train_set}_sp"
    else
        log "Stage 2: skipped (no --speed_perturb_factors)"
    fi
fi
# From here on the training set is the perturbed one, as in ESPnet.
if [ -n "${speed_perturb_factors}" ]; then
    train_set="${train_set}_sp"
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log "Stage 3: audio formatting: data/<set> -> ${dumpdir}/raw/org/<set> (${fs} Hz mono wav, utt2num_samples)"
    for dset in $(data_sets); do
        _src=data/${dset}
        _dst=${dumpdir}/raw/org/${dset}
        _logdir=${_dst}/logs
        if grep -q "sox " "${_src}/wav.scp"; then
            require_sox 3
        fi
        rm -rf "${_dst}"
        utils/copy_data_dir.sh "${_src}" "${_dst}"
        mkdir -p "${_logdir}"
        _nutt=$(wc -l <"${_src}/wav.scp")
        if [ "${_nutt}" -eq 0 ]; then
            log "Error: ${_src} has no utterances"
            exit 1
        fi
        _nj=$(( nj < _nutt ? nj : _nutt ))
        _split_scps=""
        for n in $(seq "${_nj}"); do
            _split_scps+=" ${_logdir}/wav.${n}.scp"
        done
        # shellcheck disable=SC2086
        utils/split_scp.pl "${_src}/wav.scp" ${_split_scps}
        log "formatting ${_nutt} utterances of ${dset} in ${_nj} job(s): ${_logdir}/format_audio.*.log"
        ${train_cmd} JOB=1:"${_nj}" "${_logdir}/format_audio.JOB.log" \
            ${python} -m espnet_llm.data_prep.format_audio --fs "${fs}" "${_logdir}/wav.JOB.scp" \
                "${_dst}/data/format.JOB" "${_logdir}/formatted.JOB.scp" "${_logdir}/utt2num_samples.JOB"
        for n in $(seq "${_nj}"); do cat "${_logdir}/formatted.${n}.scp"; done >"${_dst}/wav.scp"
        for n in $(seq "${_nj}"); do cat "${_logdir}/utt2num_samples.${n}"; done >"${_dst}/utt2num_samples"
        _nfailed=$(cat "${_logdir}"/format_audio.*.log | grep -c "^ERROR" || true)
        if [ "${_nfailed}" -gt 0 ]; then
            log "WARNING: ${_nfailed} utterance(s) of ${dset} could not be read and are left out:"
            grep -h "^ERROR" "${_logdir}"/format_audio.*.log | head -n 5
        fi
        grep -h "^formatted" "${_logdir}"/format_audio.*.log
        utils/fix_data_dir.sh "${_dst}"
        make_history "${_dst}"
        utils/validate_data_dir.sh "${_dst}"
    done
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    log "Stage 4: length filtering: ${dumpdir}/raw/org/<set> -> ${dumpdir}/raw/<set> (${min_wav_duration} s to ${max_wav_duration} s)"
    for dset in $(data_sets); do
        _org=${dumpdir}/raw/org/${dset}
        _dst=${dumpdir}/raw/${dset}
        rm -rf "${_dst}"
        _opts="--min_duration ${min_wav_duration} --max_duration ${max_wav_duration} --fs ${fs}"
        if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
            # shellcheck disable=SC2086
            ${python} -m espnet_llm.data_prep.length_filter ${_opts} "${_org}" "${_dst}"
        else
            # shellcheck disable=SC2086
            ${python} -m espnet_llm.data_prep.length_filter ${_opts} --report_only "${_org}"
            utils/copy_data_dir.sh "${_org}" "${_dst}"
        fi
        make_history "${_dst}"
        utils/validate_data_dir.sh "${_dst}"
    done
    log "Data summary:"
    # shellcheck disable=SC2046
    ${python} -m espnet_llm.data_prep.summary --fs "${fs}" $(for dset in $(data_sets); do echo "${dumpdir}/raw/${dset}"; done)
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    log "Stage 5: char token list: ${dumpdir}/raw/${train_set}/text_ner -> ${char_token_list}"
    mkdir -p "$(dirname "${char_token_list}")"
    # Entity marks are characters of text_ner, so they become tokens (AISHELL-NER's entity-aware baseline).
    # Run directly, not through ${train_cmd}: the job runner hands "<blank>:0" to bash unquoted, as Kaldi's does.
    _log=$(dirname "${char_token_list}")/tokenize_text.log
    if ! ${python} -m espnet2.bin.tokenize_text --token_type char \
            --input "${dumpdir}/raw/${train_set}/text_ner" --output "${char_token_list}" --field 2- \
            --cleaner none --g2p none --write_vocabulary true \
            --add_symbol "${blank}:0" --add_symbol "${oov}:1" --add_symbol "${sos_eos}:-1" >"${_log}" 2>&1; then
        tail -n 20 "${_log}"
        log "Error: tokenize_text failed; log: ${_log}"
        exit 1
    fi
    ${python} -m espnet_llm.data_prep.summary --token_list "${char_token_list}"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
