# Sourced by the run_scripts, never run on its own.
# show_help_if_asked "$@": -h/--help prints the calling script's header (its comment lines from line 2 on) and exits.
# use_project_venv: puts the project's .venv/bin (made by `make install`) first on PATH when it exists, so that its
# fairseq-train, museformer-prep, ... are the ones used even when the venv is not activated.
# require_var NAME HINT, no_positional "$@": the one convention of every run_script: inputs are VARIABLE=value,
# extra arguments are flags for the wrapped tool; a missing input or a positional path is one line and exit 2.

show_help_if_asked() {
  local arg
  for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
      exit 0
    fi
  done
}

use_project_venv() {
  local repo
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -x "$repo/.venv/bin/python" ]]; then
    export PATH="$repo/.venv/bin:$PATH"
  fi
}

# require_var NAME EXAMPLE: exit 2 with one line when the variable NAME is unset or empty.
require_var() {
  local name="$1" example="$2"
  if [[ -z "${!name:-}" ]]; then
    echo "$(basename "$0"): $name is not set; set it, e.g. $name=$example (see \`bash run_scripts/$(basename "$0") --help\`)" >&2
    exit 2
  fi
}

# no_positional "$@": every run_script takes its inputs as VARIABLE=value and passes only flags on to its tool;
# a first argument that is not a flag (an old-style positional path) is one line and exit 2.
no_positional() {
  if [[ $# -gt 0 && "$1" != -* ]]; then
    echo "$(basename "$0"): inputs are variables, not positional arguments (got '$1'): e.g." \
         "$(usage_line) (see --help)" >&2
    exit 2
  fi
}

# usage_line: the calling script's "Usage:" line from its header, without the word itself.
usage_line() {
  sed -n 's/^# Usage: *//p' "$0" | head -n 1
}

# command_or_module VAR SCRIPT MODULE: unless VAR is already set, VAR = the console script SCRIPT when it is on PATH,
# else `python -m MODULE` with the repository on PYTHONPATH (a checkout that was never `pip install -e`-ed).
command_or_module() {
  local var="$1" script="$2" module="$3" repo
  [[ -n "${!var:-}" ]] && return 0
  if command -v "$script" >/dev/null; then
    printf -v "$var" '%s' "$script"
  else
    printf -v "$var" '%s' "python -m $module"
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  fi
}
