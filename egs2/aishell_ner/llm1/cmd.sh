# How the recipe runs its parallel and long jobs: "<runner> [--gpu N] JOB=1:N <log> <command>".
# On one machine: the project's utils/run.pl (Kaldi's interface, per-job logs).
export train_cmd="utils/run.pl"
export cuda_cmd="utils/run.pl"
export decode_cmd="utils/run.pl"

# On a Slurm cluster: ESPnet's slurm.pl, which takes the same arguments. Copy utils/slurm.pl and
# conf/slurm.conf from an ESPnet checkout (egs2/TEMPLATE/asr1/) into this recipe, then:
# export train_cmd="utils/slurm.pl --config conf/slurm.conf"
# export cuda_cmd="utils/slurm.pl --config conf/slurm.conf"
# export decode_cmd="utils/slurm.pl --config conf/slurm.conf"
