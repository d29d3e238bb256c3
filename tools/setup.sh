#!/usr/bin/env bash
# Creates tools/venv with the pinned stack and installs the Debian tools the recipe uses.
# Idempotent: a second run checks the stamp and the Debian tools and returns in seconds.
set -euo pipefail
tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")
venv=${tools_dir}/venv
python=${PYTHON:-python3}
requirements=${tools_dir}/requirements.txt
stamp=${venv}/.installed

log() { echo "[tools/setup.sh] $*"; }

install_debian_tools() {
    # sctk (sclite) scores CER, sox formats and perturbs audio, espeak-ng speaks the mini corpus.
    local missing=()
    command -v sclite >/dev/null || command -v sctk >/dev/null || missing+=(sctk)
    command -v sox >/dev/null || missing+=(sox)
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
    if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "${sudo}" ]; }; then
        log "installing Debian packages: ${missing[*]}"
        if ! { ${sudo} apt-get update -qq && DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
            log "WARNING: apt-get could not install ${missing[*]}; install them by hand (sclite scoring falls back to jiwer)."
        fi
    else
        log "WARNING: missing ${missing[*]} and no apt-get with root rights here; install them by hand."
        log "         sox and espeak-ng are needed for the mini corpus; without sctk, scoring falls back to jiwer."
    fi
}

install_debian_tools

# A stamp holding the hash of requirements.txt and setup.py makes the second run a no-op.
want=$(cat "${requirements}" "${root_dir}/setup.py" | sha256sum | cut -d' ' -f1)
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
    log "environment up to date: ${venv}"
    exit 0
fi

if [ ! -x "${venv}/bin/python" ]; then
    log "creating ${venv} with $(${python} --version)"
    ${python} -m venv "${venv}"
fi
# espnet's dependency ci_sdr names a git URL in an extra; pip 23.2 accepts it, newer pips refuse,
# so pip is pinned rather than upgraded.
"${venv}/bin/python" -m pip install -q "pip==23.2.1"
log "installing pinned requirements (first run: several minutes, about 5.5 GB)"
"${venv}/bin/python" -m pip install -q -r "${requirements}"
"${venv}/bin/python" -m pip install -q --no-deps -e "${root_dir}"
"${venv}/bin/python" - <<'PY'
import torch, torchaudio, espnet, transformers, peft
from espnet2.tasks.asr import ASRTask  # imports torchaudio: fails if torch and torchaudio mismatch
print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, espnet {espnet.__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
PY
echo "${want}" > "${stamp}"
log "done: source ${venv}/bin/activate (egs2 recipes do it in path.sh)"
