# Sourced by the dialsum batch scripts: rendezvous address and port for this job, signal forwarding and requeue.
# The run id is the job id, so a requeued job (same SLURM_JOB_ID) resumes its run from its last checkpoint.
export DIALSUM_RUN_ID="${DIALSUM_RUN_ID:-slurm-${SLURM_JOB_ID}}"
DIALSUM="${DIALSUM:-dialsum}"
PREEMPTED=75  # engine.plan.PREEMPTED_EXIT_CODE
export DIALSUM_PREEMPT_LEAD_S="${DIALSUM_PREEMPT_LEAD_S:-90}"  # the --signal=B:USR1@90 lead: rank 0 warns if it is short
first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# NodeAddr, not the node name: node names need not resolve (and "localhost" would be wrong on every other node).
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show node "$first_node" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)}"
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"  # engine.distributed.slurm_port

# Run "$@" in the background, forward USR1/TERM to it (SLURM sends --signal=B:USR1@90 to this shell only), wait for
# it to really end, and requeue the job when the ranks checkpointed because of a preemption.
run_and_requeue() {
    "$@" &
    local child=$! code
    trap 'kill -USR1 "$child" 2>/dev/null' USR1
    trap 'kill -TERM "$child" 2>/dev/null' TERM
    while true; do
        wait "$child"; code=$?
        kill -0 "$child" 2>/dev/null || break  # wait returned early because a trapped signal arrived
    done
    if [ "$code" -eq "$PREEMPTED" ]; then
        echo "dialsum: preempted, requeueing job $SLURM_JOB_ID (run $DIALSUM_RUN_ID resumes from its checkpoint)"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$code"
}
