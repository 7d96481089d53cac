#!/usr/bin/env bash
# Opt-in contract check: the provider's conformance test against REAL Keystone + Nova.
#
#   localstack/openstack/real/run.sh
#
# STATUS: a first draft, NOT yet run end to end. The steps follow the upstream install guides
# (Keystone, Placement, Nova with the fake virt driver); the Glance and Neutron stand-ins it
# needs (LOCALSTACK.md) are not written yet, so it stops after Keystone + the API services
# unless CANOPY_OPENSTACK_STANDINS points at a script that serves them. Until it has run, the
# only verified contract is the local fake's (localstack/openstack/test_canopy_openstack.py).
#
# Needs: python3.11, Postgres and RabbitMQ binaries (this machine has both), loopback only.
# State lives in ${CANOPY_STATE:-.canopy}/openstack-real (venv ~1.4 GB, databases, logs).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../../.." && pwd)"
state="${CANOPY_STATE:-$repo/.canopy}/openstack-real"
venv="$state/venv"
mkdir -p "$state/logs"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

log() { echo "[openstack-real] $*" >&2; }

# 1. The services, from PyPI, in their own venv (2025.1 "Epoxy" pins).
if [ ! -x "$venv/bin/nova-api-wsgi" ] && [ ! -x "$venv/bin/nova-manage" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet 'keystone>=27,<28' 'nova>=31,<32' 'openstack-placement>=13,<14' \
    psycopg2-binary gunicorn
fi

# 2. Postgres and RabbitMQ on loopback, private to this run.
pgdata="$state/pg"
if [ ! -d "$pgdata" ]; then
  initdb -D "$pgdata" -U postgres --auth=trust >"$state/logs/initdb.log"
fi
pg_ctl -D "$pgdata" -o "-c listen_addresses=127.0.0.1 -p 55432 -k $state" -l "$state/logs/pg.log" start
trap 'pg_ctl -D "$pgdata" stop -m fast >/dev/null 2>&1 || true; cleanup' EXIT
for db in keystone placement nova_api nova nova_cell0; do
  psql -h 127.0.0.1 -p 55432 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
    || psql -h 127.0.0.1 -p 55432 -U postgres -c "CREATE DATABASE $db" >/dev/null
done
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=55672 RABBITMQ_NODENAME="canopy@localhost" \
  RABBITMQ_MNESIA_BASE="$state/rabbit" RABBITMQ_LOG_BASE="$state/logs" rabbitmq-server >"$state/logs/rabbit.out" 2>&1 &
pids+=($!)

db() { echo "postgresql+psycopg2://postgres@127.0.0.1:55432/$1"; }
password="canopy-real-secret"

# 3. Keystone on 127.0.0.1:55000.
cat >"$state/keystone.conf" <<CONF
[database]
connection = $(db keystone)
[fernet_tokens]
key_repository = $state/fernet-keys
[credential]
key_repository = $state/credential-keys
CONF
export OS_KEYSTONE_CONFIG_FILES="$state/keystone.conf"
"$venv/bin/keystone-manage" --config-file "$state/keystone.conf" db_sync
"$venv/bin/keystone-manage" --config-file "$state/keystone.conf" fernet_setup --keystone-user root --keystone-group root
"$venv/bin/keystone-manage" --config-file "$state/keystone.conf" credential_setup --keystone-user root --keystone-group root
"$venv/bin/keystone-manage" --config-file "$state/keystone.conf" bootstrap --bootstrap-password "$password" \
  --bootstrap-public-url http://127.0.0.1:55000/v3 --bootstrap-region-id RegionOne
"$venv/bin/gunicorn" --bind 127.0.0.1:55000 --chdir "$state" 'keystone.server.wsgi:initialize_public_application()' \
  >"$state/logs/keystone.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:55000/v3 >/dev/null && break; sleep 1; done
log "keystone is up"

# 4. Placement and Nova (fake virt driver) need the Glance/Neutron stand-ins from here on.
if [ -z "${CANOPY_OPENSTACK_STANDINS:-}" ]; then
  log "no Glance/Neutron stand-ins (CANOPY_OPENSTACK_STANDINS unset): stopping after Keystone"
  exit 2
fi
"$CANOPY_OPENSTACK_STANDINS" "$state" &   # must register image, network and compute endpoints
pids+=($!)
# TODO: nova.conf ([api_database]/[database]/transport_url/[keystone_authtoken]/[placement]/
# [glance]/[neutron], compute_driver=fake.SmallFakeDriver), nova-manage api_db sync,
# cell_v2 map_cell0/create_cell, db sync, placement-manage db sync, then nova-api,
# nova-conductor, nova-scheduler and nova-compute; discover_hosts.

# 5. The conformance test against it (the fault checks are skipped there).
CANOPY_OPENSTACK_CONFORMANCE_URL=http://127.0.0.1:55000/v3 \
CANOPY_OPENSTACK_CONFORMANCE_USERNAME=admin CANOPY_OPENSTACK_CONFORMANCE_PASSWORD="$password" \
CANOPY_OPENSTACK_CONFORMANCE_PROJECT=admin CANOPY_OPENSTACK_CONFORMANCE_IMAGE="${CANOPY_OPENSTACK_IMAGE:-cirros}" \
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}" \
  cargo test -p canopy-provider-openstack --test conformance real_openstack_when_configured -- --nocapture
