#!/usr/bin/env bash
# Idempotent installer for one of the local stack's Python emulators:
#   venv-install.sh NAME REQUIREMENTS PACKAGE
# creates ${CANOPY_STATE:-<repo>/.canopy}/venv-NAME and installs REQUIREMENTS into it, only
# when the venv is missing, PACKAGE is not in it, or REQUIREMENTS changed since the last
# successful install (hash stored in the venv). Prints the venv's python path on stdout;
# everything else goes to stderr.
set -euo pipefail

name="$1"
req="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
package="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
state="${CANOPY_STATE:-$repo/.canopy}"
venv="$state/venv-$name"
stamp="$venv/.canopy-requirements.sha256"
py="$venv/bin/python"

log() { echo "install ($name): $*" >&2; }

mkdir -p "$state"

# One installer at a time (tests may start several servers in parallel).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$state/venv-$name.lock"
    flock 9
fi

want="$( { cat "$req"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$py" -c "import importlib.metadata as m; m.version('$package')" 2>/dev/null; then
    log "up to date: $venv"
    echo "$py"
    exit 0
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "python3 venv module missing: installing python3-venv"
    if [[ "$(id -u)" != 0 ]]; then
        log "not root: install python3-venv yourself (apt-get install -y python3-venv)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y python3-venv >&2 || { apt-get update >&2 && apt-get install -y python3-venv >&2; }
fi

# Requirements changed (or a previous install failed half-way): start from a clean venv
# so the result is exactly requirements.txt, not a mix of old and new pins.
if [[ -e "$venv" ]]; then
    log "requirements changed or venv incomplete: recreating $venv"
    rm -rf "$venv"
fi

start=$(date +%s)
log "creating venv $venv"
python3 -m venv "$venv" >&2
log "pip install -r $req (takes 15-45 s)"
"$py" -m pip install --disable-pip-version-check --no-input --quiet -r "$req" >&2
"$py" -c "import importlib.metadata as m; print('$package', m.version('$package'))" >&2
echo "$want" >"$stamp"
log "installed in $(( $(date +%s) - start )) s"
echo "$py"
