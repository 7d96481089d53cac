#!/usr/bin/env bash
# Idempotent installer for Canopy's local bare metal (sushy-tools, Redfish; pinned in
# requirements.txt) into ${CANOPY_STATE:-<repo>/.canopy}/venv-redfish; prints the venv's python.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../venv-install.sh" redfish "$here/requirements.txt" sushy-tools
