# Stage 11's lanes, sourced by run.sh: train_in_lanes runs train_system <system> <threads> (run.sh's) for every
# system, in parallel lanes on the CPU. Stopping run.sh (Ctrl-C, or kill of run.sh alone) ends every lane's
# jobs, so that a rerun resumes each run from its last checkpoint; a system that fails is named and the
# others finish.

# kill_tree <pid>: the process and all below it (a lane's shells, launchers and training programs)
kill_tree() {
    local child
    for child in $(pgrep -P "$1"); do kill_tree "${child}"; done
    kill "$1" 2>/dev/null || true
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

# train_in_lanes <side by side: true|false> <cores> <system>...: side by side (on the CPU), every system trains
# in its own lane, the cores divided among them as threads (at least one each): a tiny model's step gains
# little from more threads (2: 1.3x faster), and with whole systems in fewer lanes the lane with two of them
# finishes long after the other. Otherwise (GPUs, a dry run, full size on the CPU) one lane: one run at a time
# takes the GPUs, or all the cores.
train_in_lanes() {
    local side_by_side=$1 cores=$2 lanes threads lane i pid failed=false lane_systems
    shift 2
    if "${side_by_side}"; then
        lanes=$#
        threads=$(( cores > lanes ? cores / lanes : 1 ))
    else
        lanes=1
        threads=${cores}
    fi
    local systems=("$@")
    _lane_pids=()  # global: the trap reads it
    trap 'log "Stage 11: stopped; run it again to resume"; for pid in "${_lane_pids[@]}"; do kill_tree "${pid}"; done; exit 1' INT TERM
    for (( lane = 0; lane < lanes; lane++ )); do
        lane_systems=()
        for (( i = lane; i < ${#systems[@]}; i += lanes )); do lane_systems+=("${systems[i]}"); done
        [ "${lanes}" -gt 1 ] && log "Stage 11: lane $(( lane + 1 ))/${lanes} (${threads} thread(s)): ${lane_systems[*]}"
        train_lane "${threads}" "${lane_systems[@]}" &
        _lane_pids+=($!)
    done
    for pid in "${_lane_pids[@]}"; do
        wait "${pid}" || failed=true
    done
    trap - INT TERM
    if "${failed}"; then
        log "Error: stage 11 failed for the system(s) named above"
        return 1
    fi
}
