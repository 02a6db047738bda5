# Sourced by the run_scripts, never run on its own.
# show_help_if_asked "$@": -h/--help prints the calling script's header (its comment lines from line 2 on) and exits.
# use_project_venv: puts the project's .venv/bin (made by `make install`) first on PATH when it exists, so that its
# fairseq-train, museformer-prep, ... are the ones used even when the venv is not activated.

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
