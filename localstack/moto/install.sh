#!/usr/bin/env bash
# Idempotent installer for Canopy's local EC2 (moto, pinned in requirements.txt) into
# ${CANOPY_STATE:-<repo>/.canopy}/venv-moto; prints the venv's python on stdout.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../venv-install.sh" moto "$here/requirements.txt" moto
