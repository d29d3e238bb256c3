#!/usr/bin/env bash
# Option parsing for recipe scripts, Kaldi's convention: source it after the defaults,
#   . utils/parse_options.sh || exit 1
# and every "--foo-bar value", "--foo_bar value" or "--foo_bar=value" sets the shell variable
# foo_bar that the script set before sourcing this file. Only those are options: an option without
# such a variable is an error (typos do not pass silently), and so are environment variables
# (exported: --PATH would break path.sh) and bash's own (upper case: --SECONDS, --IFS), since the
# recipe's options are lower case. A variable whose default is true/false only takes true/false.
#   --config <file>   reads <file> at that point of the command line: name=value lines (the value in shell
#                     quoting; blank and # lines skipped), each name checked as a --name is, with the file and
#                     line named in the error
#   --help, -h        prints ${help_message} (set it before sourcing) and exits 0
# Parsing stops at the first argument not starting with "--" or after "--"; what is left stays
# in "$@" for the script.

# _po_set <name> <value> <where>: set an option, or stop naming it and <where> it was given
_po_set() {
    local _po_n=${1//-/_} _po_v=$2 _po_w=$3
    if ! [[ ${_po_n} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_n+set}" ]; then
        echo "$0: unknown option --${_po_n}${_po_w} (no such variable in $0; see --help)" >&2
        exit 1
    fi
    if [[ ${_po_n} =~ [A-Z] ]] || [[ $(declare -p "${_po_n}") =~ ^declare\ -[a-zA-Z]*x ]]; then
        echo "$0: unknown option --${_po_n}${_po_w} (not an option of $0: its options are its own lower-case variables, not environment or bash ones; see --help)" >&2
        exit 1
    fi
    case "${!_po_n}" in
        true|false)
            if [ "${_po_v}" != true ] && [ "${_po_v}" != false ]; then
                echo "$0: option --${_po_n}${_po_w} takes true or false, got '${_po_v}'" >&2
                exit 1
            fi ;;
    esac
    printf -v "${_po_n}" '%s' "${_po_v}"
}

# _po_read_config <file>: its name=value lines through _po_set
_po_read_config() {
    local _po_f=$1 _po_l _po_i=0 _po_n _po_r _po_v
    while IFS= read -r _po_l || [ -n "${_po_l}" ]; do
        _po_i=$((_po_i + 1))
        [[ ${_po_l} =~ ^[[:space:]]*(#.*)?$ ]] && continue
        if ! [[ ${_po_l} =~ ^[[:space:]]*([A-Za-z0-9_-]+)=(.*)$ ]]; then
            echo "$0: ${_po_f} line ${_po_i}: expected name=value, got '${_po_l}'" >&2
            exit 1
        fi
        _po_n=${BASH_REMATCH[1]}; _po_r=${BASH_REMATCH[2]}
        eval "_po_v=${_po_r}" || { echo "$0: ${_po_f} line ${_po_i}: cannot read the value of ${_po_n}" >&2; exit 1; }
        _po_set "${_po_n}" "${_po_v}" " (${_po_f} line ${_po_i})"
    done < "${_po_f}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            echo "${help_message:-$0: no help message; read the option block at the top of the script}"
            exit 0 ;;
        --)
            shift
            break ;;
        --config|--config=*)
            if [ "$1" = --config ]; then
                [ $# -ge 2 ] || { echo "$0: option --config needs a file" >&2; exit 1; }
                _po_value=$2; shift 2
            else
                _po_value=${1#--config=}; shift
            fi
            [ -f "${_po_value}" ] || { echo "$0: config file ${_po_value} not found" >&2; exit 1; }
            _po_read_config "${_po_value}" ;;
        --*)
            if [[ $1 == *=* ]]; then
                _po_name=${1%%=*}; _po_value=${1#*=}; shift
            else
                [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
                _po_name=$1; _po_value=$2; shift 2
            fi
            _po_set "${_po_name#--}" "${_po_value}" "" ;;
        *)
            break ;;
    esac
done
unset _po_name _po_value
unset -f _po_set _po_read_config
true
