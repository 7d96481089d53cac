#!/usr/bin/env bash
# Opt-in contract check: the provider's conformance test against REAL Keystone + Nova.
#
#   localstack/openstack/real/run.sh            # from anywhere; exit status = the test's
#   CANOPY_OPENSTACK_REAL_KEEP=1 ... run.sh     # keep the cloud up after the test (Ctrl-C stops)
#
# What it does, in order (see README.md next to canopy_openstack.py, "Against the real thing"):
# 1. installs Keystone 30, Nova 34 and Placement 16 (the newest series on PyPI) from PyPI, once, in its own venv at
#    .canopy/venv-openstack-real (~45 s the first time);
# 2. creates five databases with unique names in the Postgres on 127.0.0.1:5432 (user postgres,
#    trust auth) and a unique vhost in the RabbitMQ on 127.0.0.1:5672 (guest/guest);
# 3. starts, on 127.0.0.1 only and with one worker each: Keystone, Placement and nova-api under
#    gunicorn, nova-conductor, nova-scheduler, nova-compute (compute_driver = fake.FakeDriver),
#    and standins.py (a minimal Glance + Neutron: one image; networks "auto" -> one network);
# 4. runs `cargo test -p canopy-provider-openstack --test conformance` with the
#    CANOPY_OPENSTACK_CONFORMANCE_* variables (the real-cloud test skips the fault checks);
# 5. on exit, however it exits: stops every process it started (by PID) and drops the
#    databases and the vhost. Logs stay in .canopy/openstack-real/logs.
# With CANOPY_OPENSTACK_REAL_KEEP=1, compare.py (next to this) diffs the fake against it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="$repo/.canopy/venv-openstack-real"
state="$repo/.canopy/openstack-real"
logs="$state/logs"
py=python3.11
command -v "$py" >/dev/null || py=python3
started=$(date +%s)
log() { echo "[openstack-real +$(($(date +%s) - started))s] $*" >&2; }

# 1. Install, idempotently (a marker file records the pinned set that was installed).
pins="keystone>=30,<31 nova>=34,<35 openstack-placement>=16,<17 psycopg2-binary gunicorn"
if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$pins" ]; then
  log "installing Keystone, Nova and Placement into $venv"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $pins
  echo "$pins" >"$venv/.installed"
fi
vpy="$venv/bin/python"

rm -rf "$state"
mkdir -p "$logs" "$state/nova" "$state/locks" "$state/wsgi"
suffix="$(date +%s)_$$"
dbs=(keystone placement nova_api nova nova_cell0)
dbname() { echo "canopy_osr_${suffix}_$1"; }
vhost="canopy-osr-$suffix"
pids=()
psqlc() { psql -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 -qtAc "$1" postgres; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  log "stopping ${#pids[@]} processes"
  local all=()
  for pid in "${pids[@]}"; do
    all+=("$pid")
    # gunicorn and oslo.service workers are children of the processes started here.
    for child in $(pgrep -P "$pid" 2>/dev/null || true); do all+=("$child"); done
  done
  for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for db in "${dbs[@]}"; do
    psqlc "DROP DATABASE IF EXISTS $(dbname "$db") WITH (FORCE)" 2>/dev/null || log "could not drop $(dbname "$db")"
  done
  if [ -n "${vhost_made:-}" ]; then rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || log "could not delete vhost $vhost"; fi
  log "done (exit $status); logs in $logs"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 2. Databases and the RabbitMQ vhost.
pg_isready -h 127.0.0.1 -p 5432 -q || { log "no Postgres on 127.0.0.1:5432"; exit 1; }
for db in "${dbs[@]}"; do psqlc "CREATE DATABASE $(dbname "$db")"; done
if rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 \
  && rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null 2>&1; then
  vhost_made=1
  transport="rabbit://guest:guest@127.0.0.1:5672/$vhost"
else
  log "could not add a RabbitMQ vhost; using / with a private control exchange"
  transport="rabbit://guest:guest@127.0.0.1:5672/"
fi
db() { echo "postgresql+psycopg2://postgres@127.0.0.1:5432/$(dbname "$1")"; }

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ks_port=$(free_port); pl_port=$(free_port); nova_port=$(free_port)
keystone="http://127.0.0.1:$ks_port"; placement="http://127.0.0.1:$pl_port"; nova="http://127.0.0.1:$nova_port"
admin_password="admin-$suffix"; service_password="service-$suffix"; user_password="canopy-$suffix"
image_id="$("$py" -c 'import uuid; print(uuid.uuid4())')"
me_user="$(id -un)"; me_group="$(id -gn)"

# The stand-ins for Glance and Neutron.
"$py" "$here/standins.py" --host 127.0.0.1 --port 0 --image-id "$image_id" \
  >"$state/standins.out" 2>"$logs/standins.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q '^ready ' "$state/standins.out" 2>/dev/null && break; sleep 0.1; done
standins="$(sed -n 's/^ready //p' "$state/standins.out")"
[ -n "$standins" ] || { log "the stand-ins did not start"; exit 1; }

# WSGI entry points that ignore gunicorn's own argv (oslo.config would parse it).
for app in keystone:keystone.wsgi.api placement:placement.wsgi.api nova:nova.wsgi.osapi_compute; do
  printf 'import sys\nsys.argv = sys.argv[:1]\nfrom %s import application  # noqa: E402,F401\n' "${app#*:}" \
    >"$state/wsgi/canopy_${app%%:*}_wsgi.py"
done
serve() { # name port
  "$venv/bin/gunicorn" --bind "127.0.0.1:$2" --workers 1 --timeout 120 --pythonpath "$state/wsgi" \
    --access-logfile - "canopy_$1_wsgi:application" >>"$logs/$1.log" 2>&1 &
  pids+=($!)
}
wait_http() { # url seconds name
  for _ in $(seq 1 $(($2 * 5))); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done
  log "$3 did not answer at $1 within $2 s (see $logs)"; exit 1
}

# 3a. Keystone.
cat >"$state/keystone.conf" <<CONF
[DEFAULT]
use_stderr = true
[database]
connection = $(db keystone)
[fernet_tokens]
key_repository = $state/fernet-keys
[credential]
key_repository = $state/credential-keys
[token]
provider = fernet
CONF
km() { "$venv/bin/keystone-manage" --config-file "$state/keystone.conf" "$@" >>"$logs/keystone-manage.log" 2>&1; }
log "keystone: db sync and bootstrap"
km db_sync
km fernet_setup --keystone-user "$me_user" --keystone-group "$me_group"
km credential_setup --keystone-user "$me_user" --keystone-group "$me_group"
km bootstrap --bootstrap-password "$admin_password" --bootstrap-region-id RegionOne \
  --bootstrap-public-url "$keystone" --bootstrap-internal-url "$keystone"
OS_KEYSTONE_CONFIG_DIR="$state" OS_KEYSTONE_CONFIG_FILES=keystone.conf serve keystone "$ks_port"
wait_http "$keystone/v3" 60 keystone
"$py" "$here/cloud.py" keystone "$keystone" "$admin_password" "$service_password" "$user_password" \
  "$nova" "$placement" "$standins"
log "keystone is up at $keystone"

authtoken() { # user
  cat <<CONF
[keystone_authtoken]
www_authenticate_uri = $keystone
auth_url = $keystone
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $service_password
CONF
}

# 3b. Placement.
{
  cat <<CONF
[DEFAULT]
use_stderr = true
[api]
auth_strategy = keystone
[placement_database]
connection = $(db placement)
CONF
  authtoken placement
} >"$state/placement.conf"
"$venv/bin/placement-manage" --config-file "$state/placement.conf" db sync >>"$logs/placement-manage.log" 2>&1
OS_PLACEMENT_CONFIG_DIR="$state" serve placement "$pl_port"
wait_http "$placement/" 60 placement

# 3c. Nova.
service_auth() { # section
  cat <<CONF
[$1]
auth_type = password
auth_url = $keystone
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = $service_password
region_name = RegionOne
CONF
}
{
  cat <<CONF
[DEFAULT]
use_stderr = true
transport_url = $transport
control_exchange = canopy-osr-$suffix
compute_driver = fake.FakeDriver
host = canopy-real-$suffix
my_ip = 127.0.0.1
state_path = $state/nova
instances_path = $state/nova/instances
osapi_compute_listen = 127.0.0.1
osapi_compute_workers = 1
metadata_workers = 1
[api]
auth_strategy = keystone
[api_database]
connection = $(db nova_api)
[database]
connection = $(db nova)
[conductor]
workers = 1
[scheduler]
workers = 1
[oslo_concurrency]
lock_path = $state/locks
[vnc]
enabled = false
[glance]
endpoint_override = $standins
[cinder]
os_region_name = RegionOne
CONF
  authtoken nova
  service_auth placement
  service_auth neutron
  echo "endpoint_override = $standins"
} >"$state/nova.conf"
cp "$venv/etc/nova/api-paste.ini" "$state/api-paste.ini"
nm() { "$venv/bin/nova-manage" --config-file "$state/nova.conf" "$@" >>"$logs/nova-manage.log" 2>&1; }
log "nova: db syncs and cells"
nm api_db sync
nm cell_v2 map_cell0 --database_connection "$(db nova_cell0)"
nm cell_v2 create_cell --name cell1
nm db sync
OS_NOVA_CONFIG_DIR="$state" serve nova "$nova_port"
for svc in conductor scheduler compute; do
  "$venv/bin/nova-$svc" --config-file "$state/nova.conf" >>"$logs/nova-$svc.log" 2>&1 &
  pids+=($!)
done
wait_http "$nova/" 90 nova-api
# The compute host must be mapped to cell1 before the scheduler can use it.
for i in $(seq 1 90); do
  nm cell_v2 discover_hosts || true
  n=$(psql -h 127.0.0.1 -p 5432 -U postgres -qtAc "SELECT count(*) FROM host_mappings" "$(dbname nova_api)" 2>/dev/null || echo 0)
  [ "${n:-0}" -gt 0 ] && break
  [ "$i" = 90 ] && { log "nova-compute never registered (see $logs/nova-compute.log)"; exit 1; }
  sleep 1
done
"$py" "$here/cloud.py" flavors "$keystone" "$admin_password"
"$py" "$here/cloud.py" wait-zone "$keystone" "$user_password" 60
log "nova is up at $nova/v2.1 ($(ps -o rss= -p "$(echo "${pids[@]}" | tr ' ' ',')" 2>/dev/null | awk '{s+=$1} END {print int(s/1024)}') MiB RSS in the parent processes)"

if [ -n "${CANOPY_OPENSTACK_REAL_KEEP:-}" ]; then
  log "keeping it up: OS_AUTH_URL=$keystone/v3 OS_USERNAME=canopy OS_PASSWORD=$user_password OS_PROJECT_NAME=canopy image $image_id (Ctrl-C stops)"
  wait
fi

# 4. The conformance test against it (the fault checks are skipped there).
log "cargo test -p canopy-provider-openstack --test conformance (against the real cloud)"
cd "$repo"
CANOPY_OPENSTACK_CONFORMANCE_URL="$keystone/v3" \
CANOPY_OPENSTACK_CONFORMANCE_USERNAME=canopy CANOPY_OPENSTACK_CONFORMANCE_PASSWORD="$user_password" \
CANOPY_OPENSTACK_CONFORMANCE_PROJECT=canopy CANOPY_OPENSTACK_CONFORMANCE_IMAGE="$image_id" \
CANOPY_OPENSTACK_CONFORMANCE_REGION=RegionOne CANOPY_OPENSTACK_CONFORMANCE_ZONE=nova \
CANOPY_OPENSTACK_CONFORMANCE_FLAVOR=m1.small \
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}" \
  cargo test -p canopy-provider-openstack --test conformance -- --nocapture
log "conformance against real Keystone + Nova passed"
