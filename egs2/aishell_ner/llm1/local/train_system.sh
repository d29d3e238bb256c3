# Stage 11's training of one system, sourced by run.sh (whose settings it reads) before local/train_lanes.sh:
# train_system <system> <threads>: the runs of one system in order, each LLM run from the model of the run
# its line names (llm_runs), with its optimiser and LR schedule continued; the Conformer's through local/conformer.sh.
train_system() {
    local system=$1 threads=$2 i _system phase config dir opts shapes from previous input=audio
    if [ "${system}" = conformer ]; then
        conformer 11 --threads "${threads}"
        return
    fi
    [ -n "${whisper_model}" ] && input="cached Whisper features of ${feats_dir}"
    for i in "${!llm_runs[@]}"; do
        read -r _system phase config _ previous <<<"${llm_runs[i]}"
        [ "${_system}" = "${system}" ] || continue
        dir=${expdir}/${system}/${phase}
        IFS=$'\t' read -r _ opts shapes <<<"${llm_plan[i]}"
        opts="--config ${config} ${opts} ${shapes}"
        from=
        if "${dry_run}"; then
            opts+=" --dry_run true"
        elif [ "${previous}" != - ]; then
            from=${expdir}/${system}/${previous}/${inference_model}
            if [ ! -f "${from}" ]; then
                log "Error: ${system}/${phase} starts from ${from}, which does not exist: train the previous phase first"
                return 1
            fi
            # the weights of the previous phase, and its optimiser and LR schedule continued
            opts+=" --init_param ${from} --continue_schedule_from ${expdir}/${system}/${previous}/checkpoint.pth"
        fi
        log "Stage 11: $("${dry_run}" && echo "dry run of" || echo training) ${system}/${phase} (${config}) on ${input}," \
            "${ngpu} GPU(s) x ${num_nodes} node(s): ${dir}/train.log"
        [ -z "${from}" ] || log "Stage 11: ${system}/${phase} starts from ${from}, its optimiser and LR schedule continued"
        if [ -n "${whisper_model}" ] && ! "${dry_run}"; then
            for dset in "${train_set}" "${valid_set}"; do
                report_failed_dump "${dset}" "skipped, each named in train.log, and counted as broken"
            done
        fi
        # shellcheck disable=SC2086
        local/train.sh --ngpu "${ngpu}" --num_nodes "${num_nodes}" --threads "${threads}" \
            --train_module espnet_llm.bin.speech_llm_train "${dir}" -- ${opts} ${train_args}
    done
}
