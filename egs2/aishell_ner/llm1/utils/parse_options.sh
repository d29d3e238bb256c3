#!/usr/bin/env bash
# Option parsing for recipe scripts, Kaldi's convention: source it after the defaults,
#   . utils/parse_options.sh || exit 1
# and every "--foo-bar value", "--foo_bar value" or "--foo_bar=value" sets the shell variable
# foo_bar that the script set before sourcing this file. Only those are options: an option without
# such a variable is an error (typos do not pass silently), and so are environment variables
# (exported: --PATH would break path.sh) and bash's own (upper case: --SECONDS, --IFS), since the
# recipe's options are lower case. A variable whose default is true/false only takes true/false.
#   --config <file>   sources <file> (name=value lines) at that point of the command line
#   --help, -h        prints ${help_message} (set it before sourcing) and exits 0
# Parsing stops at the first argument not starting with "--" or after "--"; what is left stays
# in "$@" for the script.

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
            . "${_po_value}" || exit 1 ;;
        --*)
            if [[ $1 == *=* ]]; then
                _po_name=${1%%=*}; _po_value=${1#*=}; shift
            else
                [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
                _po_name=$1; _po_value=$2; shift 2
            fi
            _po_name=${_po_name#--}
            _po_name=${_po_name//-/_}
            if ! [[ ${_po_name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_name+set}" ]; then
                echo "$0: unknown option --${_po_name} (no such variable in $0; see --help)" >&2
                exit 1
            fi
            if [[ ${_po_name} =~ [A-Z] ]] || [[ $(declare -p "${_po_name}") =~ ^declare\ -[a-zA-Z]*x ]]; then
                echo "$0: unknown option --${_po_name} (not an option of $0: its options are its own lower-case variables, not environment or bash ones; see --help)" >&2
                exit 1
            fi
            case "${!_po_name}" in
                true|false)
                    if [ "${_po_value}" != true ] && [ "${_po_value}" != false ]; then
                        echo "$0: option --${_po_name} takes true or false, got '${_po_value}'" >&2
                        exit 1
                    fi ;;
            esac
            printf -v "${_po_name}" '%s' "${_po_value}" ;;
        *)
            break ;;
    esac
done
unset _po_name _po_value
true
