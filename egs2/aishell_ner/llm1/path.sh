# Sourced by run.sh and the local/ scripts: the project's environment (created by tools/setup.sh).
# Located through this file itself, so it also works from a copy of the recipe made of symlinks.
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
if [ ! -f "${MAIN_ROOT}/tools/venv/bin/activate" ]; then
    echo "path.sh: ${MAIN_ROOT}/tools/venv not found: run ${MAIN_ROOT}/tools/setup.sh first" >&2
    return 1
fi
# shellcheck disable=SC1091
. "${MAIN_ROOT}/tools/venv/bin/activate"
# this checkout's espnet_llm first, whichever checkout the venv's editable install names
export PYTHONPATH=${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
export PATH=${PWD}/utils:${PATH}
export LC_ALL=C  # byte order for sort, as the data directories are sorted
export PYTHONIOENCODING=UTF-8
export OMP_NUM_THREADS=1  # the parallelism comes from --nj jobs
