#!/usr/bin/env bash
# Makes this machine ready for the demo and the tests, idempotently:
#   - Debian packages Canopy needs (PostgreSQL, python3 for the sample app, curl, crun to run
#     image tasks), and with `setup.sh test` Chromium (the web UI's real-browser test runs it
#     headless), docker-registry and busybox-static (the image tests' registry and images) too;
#   - a PostgreSQL that accepts `postgres` without a password on loopback: the one on
#     127.0.0.1:5432 when it does, else a private cluster under .canopy/pg on a free port.
# Prints the database URL (a maintenance database; tests and the demo create their own).
set -euo pipefail
cd "$(dirname "$0")/.."
state=.canopy
mkdir -p "$state"

need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pg_isready >/dev/null || need+=(postgresql-client)
command -v crun >/dev/null || need+=(crun)
if [ "${1:-}" = test ]; then
    command -v chromium >/dev/null || need+=(chromium)
    dpkg -s docker-registry >/dev/null 2>&1 || need+=(docker-registry)
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >&2
fi

# crun refuses a host whose cgroup v2 mount still holds controllers while the others are on v1
# ("cgroups in hybrid mode not supported"): here only hugetlb is left there, so give it a v1
# hierarchy of its own, which empties the v2 mount's controller list.
unified=/sys/fs/cgroup/unified/cgroup.controllers
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] && [ -f "$unified" ] && grep -qw hugetlb "$unified" \
    && [ -z "$(cat /sys/fs/cgroup/unified/cgroup.subtree_control 2>/dev/null)" ]; then
    mkdir -p /sys/fs/cgroup/hugetlb
    mount -t cgroup -o hugetlb none /sys/fs/cgroup/hugetlb >&2 || echo "setup: could not mount a hugetlb hierarchy; crun will refuse image tasks (runc would not)" >&2
fi

can_use() { psql "$1" -qtAc 'SELECT 1' >/dev/null 2>&1; }

# 1. An explicit URL wins.
if [ -n "${CANOPY_DATABASE_URL:-}" ] && can_use "$CANOPY_DATABASE_URL"; then
    echo "$CANOPY_DATABASE_URL"; exit 0
fi
# 2. The machine's own PostgreSQL, if it trusts postgres on loopback (start it if it is down).
system_url="postgres://postgres@127.0.0.1:5432/postgres"
if ! can_use "$system_url" && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    done
    for _ in $(seq 20); do can_use "$system_url" && break; sleep 0.25; done
fi
if can_use "$system_url"; then
    echo "$system_url"; exit 0
fi
# 3. A private cluster owned by the postgres user, with trust auth on loopback only.
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
data="$PWD/$state/pg"
port_file="$state/pg.port"
if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"; chown postgres "$data"; chmod 700 "$data"
    su postgres -s /bin/sh -c "$bin/initdb -D '$data' -U postgres --auth=trust >/dev/null"
fi
if [ ! -f "$port_file" ]; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' > "$port_file"
fi
port=$(cat "$port_file")
url="postgres://postgres@127.0.0.1:$port/postgres"
if ! can_use "$url"; then
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$data' -l '$data/server.log' -w -o \"-c listen_addresses=127.0.0.1 -p $port -k /tmp\" start >/dev/null"
fi
can_use "$url" || { echo "setup: PostgreSQL did not start; see $data/server.log" >&2; exit 1; }
echo "$url"
