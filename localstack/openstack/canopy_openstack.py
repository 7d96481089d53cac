#!/usr/bin/env python3
"""Canopy's local OpenStack: a faithful fake of Keystone v3 + Nova 2.1 (standard library only),
plus a small JSON control API under /_canopy/ for fault injection.

    python3 canopy_openstack.py --host 127.0.0.1 --port 0 [--region RegionOne] [--max-instances N]

Prints exactly one line, `ready http://HOST:PORT`, on stdout once the socket is listening;
everything else goes to stderr. SIGTERM or SIGINT stops it cleanly (exit 0).

Layout of the one HTTP port:
  /v3, /identity/v3   Keystone v3 (version document, tokens, application credentials)
  /compute/           Nova version discovery; /compute/v2.1/... the compute API (token required)
  /_canopy/           control API (no auth)

What is modelled, and how it follows real Nova (see the README for the full list):
  * a server is BUILD with task_state `scheduling` for a short time (the scheduler picks a
    host), then BUILD/`spawning` for the build time, then ACTIVE; capacity faults, AZ outages
    and quota are decided where real Nova decides them (scheduler -> ERROR "No valid host was
    found...", API -> 403 "Quota exceeded for instances...");
  * a DELETE of a placed server leaves it visible for a moment (its status, task_state
    `deleting`) before it is 404, as Nova's compute host takes a moment to destroy it; an
    unplaced one (still scheduling, or ERROR with no valid host) is deleted at once, as Nova
    deletes it locally in the API;
  * servers count against quota until deleted, ERROR and deleting ones included;
  * a call without a valid token is refused by the auth middleware (keystonemiddleware's
    401 body and WWW-Authenticate), before Nova parses the microversion;
  * unknown list filters are ignored (as Nova does for non-admin users), `name` is a regex;
  * microversions 2.1 ... MAX_MICROVERSION; a few responses change shape with the version
    (2.47 embeds the flavor in a server, 2.37 requires `networks` on create, 2.39 drops
    `maxImageMeta` from /limits, 2.75 `swap`: 0). The max stays 2.96: 2.98 (image properties
    in a server), 2.100 (scheduler_hints) and 2.102 (flavor fields removed, unknown query
    parameters refused) change shapes the fake does not model.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import json
import logging
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger("canopy_openstack")

MIN_MICROVERSION = (2, 1)
MAX_MICROVERSION = (2, 96)  # Nova 34 has 2.104; see the module docstring for why not here
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
HOST_FAILURE = "Instance failed: the compute host went down (injected by /_canopy/faults/fail)"
MAX_LIMIT = 1000  # Nova's [api]max_limit default
METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")  # Nova's metadata key pattern
DOMAIN = {"id": "default", "name": "Default"}

# name, id, vcpus, ram MiB, disk GiB: the classic m1 set plus a few general-purpose flavors.
FLAVORS = [
    ("m1.tiny", "1", 1, 512, 1),
    ("m1.small", "2", 1, 2048, 20),
    ("m1.medium", "3", 2, 4096, 40),
    ("m1.large", "4", 4, 8192, 80),
    ("m1.xlarge", "5", 8, 16384, 160),
    ("gp1.small", "10", 2, 8192, 40),
    ("gp1.medium", "11", 4, 16384, 80),
    ("gp1.large", "12", 8, 32768, 160),
    ("c1.large", "20", 8, 16384, 80),
]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


class ApiError(Exception):
    """An error answered in Nova's body shape: {"<name>": {"code", "message"}}."""

    NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
             405: "badMethod", 409: "conflictingRequest", 413: "overLimit", 429: "overLimit",
             501: "notImplemented", 503: "serviceUnavailable"}

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {self.NAMES.get(self.code, "computeFault"): {"code": self.code, "message": self.message}}


class KeystoneError(ApiError):
    """Keystone's error shape: {"error": {"code", "title", "message"}}."""

    TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "title": self.TITLES.get(self.code, "Error"), "message": self.message}}


class ControlError(ApiError):
    def body(self) -> dict[str, Any]:
        return {"error": self.message}


UNAUTHENTICATED = "The request you have made requires authentication."


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------
class Cloud:
    """Everything the fake knows, behind one lock. Server states are computed lazily from
    their timeline (see `refresh`), so every request sees what the clock dictates."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.lock = threading.RLock()
        self.region = args.region
        self.zones: list[str] = args.zones.split(",")
        self.user = {"id": uuid.uuid4().hex, "name": args.username, "domain": DOMAIN, "password": args.password}
        self.project = {"id": uuid.uuid4().hex, "name": args.project, "domain": DOMAIN}
        self.app_creds: dict[str, dict[str, Any]] = {}
        if args.app_cred_id:
            self.app_creds[args.app_cred_id] = {
                "id": args.app_cred_id, "name": "canopy", "secret": args.app_cred_secret,
                "user_id": self.user["id"], "project_id": self.project["id"], "unrestricted": False,
            }
        self.tokens: dict[str, dict[str, Any]] = {}
        self.max_instances = args.max_instances
        self.max_cores = args.max_cores
        self.max_ram = args.max_ram
        self.schedule_seconds = args.schedule_seconds
        self.default_build_seconds = args.build_seconds
        self.delete_seconds = args.delete_seconds
        self.servers: dict[str, dict[str, Any]] = {}
        self.ips = itertools.count(10)
        self.flavors = [
            {"name": n, "id": i, "vcpus": c, "ram": r, "disk": d} for (n, i, c, r, d) in FLAVORS
        ]
        self.clear_faults()

    def clear_faults(self) -> None:
        with self.lock:
            self.build_seconds = self.default_build_seconds
            self.quota_remaining: int | None = None  # -1: until cleared
            self.capacity: list[dict[str, Any]] = []  # {"flavor", "remaining"}
            self.outages: set[str] = set()
            self.throttle_remaining: int | None = None

    def flavor(self, ref: str) -> dict[str, Any] | None:
        """By flavorRef: an id or a link ending in one (Nova does not take names here)."""
        ref = ref.rstrip("/").rsplit("/", 1)[-1]
        return next((f for f in self.flavors if f["id"] == ref), None)

    def flavor_named(self, name: str) -> dict[str, Any] | None:
        return next((f for f in self.flavors if f["name"] == name or f["id"] == name), None)

    # ---- server lifecycle ----
    def refresh(self, s: dict[str, Any], now: float) -> None:
        if s["delete_at"] is not None:
            # Being deleted: frozen as it was, until the compute host is done with it.
            if now >= s["delete_at"]:
                s["deleted"] = True
            return
        if s["status"] != "BUILD":
            return
        if now < s["scheduled_at"]:
            return
        if s["fate"] is not None:
            self.set_error(s, s["fate"], s["scheduled_at"])
            return
        if s["task_state"] == "scheduling":
            s["task_state"] = "spawning"
            s["updated"] = s["scheduled_at"]
            s["placed"] = True
        if now >= s["active_at"]:
            # The port's address shows in the server once the build is done (Nova's network
            # info cache); until then `addresses` is {}.
            s.update(status="ACTIVE", vm_state="active", task_state=None, power_state=1,
                     updated=s["active_at"], launched_at=s["active_at"], progress=0,
                     addresses=s["planned_addresses"])

    def set_error(self, s: dict[str, Any], message: str, when: float) -> None:
        s.update(status="ERROR", vm_state="error", task_state=None, power_state=0, updated=when)
        s["fault"] = {"code": 500, "created": iso(when), "message": message}
        if message == NO_VALID_HOST:
            s["fault"]["details"] = "Traceback: nova.exception.NoValidHost (fake)"
            s["zone"] = s["requested_zone"] or ""

    def delete(self, s: dict[str, Any], now: float) -> None:
        """DELETE /servers/{id}: a placed server is `deleting` (its status kept) for
        `delete_seconds`, then gone; an unplaced one is gone at once (Nova's local delete)."""
        self.refresh(s, now)
        if s["delete_at"] is not None:
            return  # already being deleted: Nova accepts the DELETE again
        s["deleted_at"] = time.time()
        s["updated"] = s["deleted_at"]
        if not s["placed"] or self.delete_seconds <= 0:
            s["delete_at"] = now
            s["deleted"] = True
        else:
            s["delete_at"] = now + self.delete_seconds
            s["task_state"] = "deleting"

    def live(self, now: float) -> list[dict[str, Any]]:
        out = []
        for s in self.servers.values():
            self.refresh(s, now)
            if not s["deleted"]:
                out.append(s)
        return out

    def usage(self, now: float) -> tuple[int, int, int]:
        live = self.live(now)
        return len(live), sum(s["flavor"]["vcpus"] for s in live), sum(s["flavor"]["ram"] for s in live)


# --------------------------------------------------------------------------------------
# Keystone v3
# --------------------------------------------------------------------------------------
def keystone_version(base: str) -> dict[str, Any]:
    return {"version": {
        "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }}


def issue_token(cloud: Cloud, base: str, body: Any) -> tuple[str, dict[str, Any]]:
    auth = body.get("auth") if isinstance(body, dict) else None
    identity = auth.get("identity") if isinstance(auth, dict) else None
    if not isinstance(identity, dict) or not isinstance(identity.get("methods"), list):
        raise KeystoneError(400, "Invalid input for field 'identity': 'methods' is a required property")
    methods = identity["methods"]
    scope = auth.get("scope")
    app_cred = None
    with cloud.lock:
        if methods == ["password"]:
            user = (identity.get("password") or {}).get("user") or {}
            domain = user.get("domain") or {}
            name_ok = user.get("id") == cloud.user["id"] or (
                user.get("name") == cloud.user["name"] and (domain.get("id") == DOMAIN["id"] or domain.get("name") == DOMAIN["name"])
            )
            if not (name_ok and user.get("password") == cloud.user["password"]):
                raise KeystoneError(401, UNAUTHENTICATED)
        elif methods == ["application_credential"]:
            ac = identity.get("application_credential") or {}
            found = cloud.app_creds.get(ac.get("id", ""))
            if found is None and ac.get("name"):
                found = next((c for c in cloud.app_creds.values() if c["name"] == ac["name"]), None)
            if found is None or not secrets.compare_digest(str(ac.get("secret", "")), found["secret"]):
                raise KeystoneError(401, UNAUTHENTICATED)
            if scope:
                raise KeystoneError(401, "Application credentials cannot request a scope.")
            app_cred = found
            scope = {"project": {"id": found["project_id"]}}
        else:
            raise KeystoneError(401, f"Unsupported authentication method: {','.join(map(str, methods))}")
        project = None
        if scope:
            p = scope.get("project") if isinstance(scope, dict) else None
            if not isinstance(p, dict):
                raise KeystoneError(400, "Invalid input for field 'scope': only project scope is supported")
            pd = p.get("domain") or {}
            if p.get("id") == cloud.project["id"] or (
                p.get("name") == cloud.project["name"] and (pd.get("id") == DOMAIN["id"] or pd.get("name") == DOMAIN["name"])
            ):
                project = cloud.project
            else:
                raise KeystoneError(401, UNAUTHENTICATED)
        now = time.time()
        token_id = "gAAAAA" + secrets.token_urlsafe(48)
        record = {"expires": now + 3600, "issued": now, "project": project, "methods": methods, "app_cred": app_cred}
        cloud.tokens[token_id] = record
        return token_id, token_body(cloud, base, record)


def token_body(cloud: Cloud, base: str, record: dict[str, Any]) -> dict[str, Any]:
    user = {k: cloud.user[k] for k in ("id", "name", "domain")}
    user["password_expires_at"] = None
    token: dict[str, Any] = {
        "methods": record["methods"], "user": user, "audit_ids": [secrets.token_urlsafe(16)],
        "expires_at": iso_micro(record["expires"]) + "Z", "issued_at": iso_micro(record["issued"]) + "Z",
    }
    if record["project"] is not None:
        token["project"] = record["project"]
        token["is_domain"] = False
        token["roles"] = [{"id": "member-role", "name": "member"}, {"id": "reader-role", "name": "reader"}]
        if record["app_cred"] is not None:
            token["application_credential"] = {"id": record["app_cred"]["id"], "name": record["app_cred"]["name"],
                                               "restricted": not record["app_cred"]["unrestricted"]}
        def endpoints(url: str) -> list[dict[str, Any]]:
            return [{"id": uuid.uuid5(uuid.NAMESPACE_URL, url + i).hex, "interface": i, "region": cloud.region,
                     "region_id": cloud.region, "url": url} for i in ("public", "internal", "admin")]
        token["catalog"] = [
            {"id": "compute", "type": "compute", "name": "nova", "endpoints": endpoints(f"{base}/compute/v2.1")},
            {"id": "identity", "type": "identity", "name": "keystone", "endpoints": endpoints(f"{base}/identity")},
        ]
    return {"token": token}


# --------------------------------------------------------------------------------------
# Nova
# --------------------------------------------------------------------------------------
def nova_versions(base: str) -> dict[str, Any]:
    return {"versions": [
        {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "", "updated": "2011-01-21T11:33:21Z",
         "links": [{"rel": "self", "href": f"{base}/compute/v2/"}]},
        nova_v21(base),
    ]}


def nova_v21(base: str) -> dict[str, Any]:
    return {"id": "v2.1", "status": "CURRENT", "version": "%d.%d" % MAX_MICROVERSION,
            "min_version": "%d.%d" % MIN_MICROVERSION, "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/compute/v2.1/"},
                      {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}]}


def parse_microversion(headers: Any) -> tuple[int, int]:
    value = None
    for h in headers.get_all("OpenStack-API-Version") or []:
        for part in h.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() == "compute":
                value = version.strip()
    if value is None:
        value = headers.get("X-OpenStack-Nova-API-Version")
    if value is None:
        return MIN_MICROVERSION
    if value.lower() == "latest":
        return MAX_MICROVERSION
    m = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
    if not m:
        raise ApiError(400, f"API Version String {value} is of invalid format. Must be of format MajorNum.MinorNum.")
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_MICROVERSION <= version <= MAX_MICROVERSION:
        raise ApiError(406, "Version %s is not supported by the API. Minimum is %d.%d and maximum is %d.%d."
                       % ((value,) + MIN_MICROVERSION + MAX_MICROVERSION))
    return version


def server_view(cloud: Cloud, base: str, s: dict[str, Any], mv: tuple[int, int]) -> dict[str, Any]:
    link = f"{base}/compute/v2.1/servers/{s['id']}"
    f = s["flavor"]
    if mv >= (2, 47):
        flavor: dict[str, Any] = {"vcpus": f["vcpus"], "ram": f["ram"], "disk": f["disk"], "ephemeral": 0,
                                  "swap": 0, "original_name": f["name"], "extra_specs": {}}
    else:
        flavor = {"id": f["id"], "links": [{"rel": "bookmark", "href": f"{base}/compute/flavors/{f['id']}"}]}
    view: dict[str, Any] = {
        "id": s["id"], "name": s["name"], "status": s["status"], "tenant_id": cloud.project["id"],
        "user_id": cloud.user["id"], "metadata": dict(s["metadata"]), "hostId": s["host_id"] if s["placed"] else "",
        "image": {"id": s["image"], "links": [{"rel": "bookmark", "href": f"{base}/compute/images/{s['image']}"}]},
        "flavor": flavor, "created": iso(s["created"]), "updated": iso(s["updated"]),
        "addresses": s["addresses"], "accessIPv4": "", "accessIPv6": "",
        "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link.replace("/v2.1", "")}],
        "OS-DCF:diskConfig": "MANUAL", "progress": 0, "OS-EXT-AZ:availability_zone": s["zone"],
        "config_drive": "", "key_name": None,
        "OS-SRV-USG:launched_at": iso_micro(s["launched_at"]) if s.get("launched_at") else None,
        "OS-SRV-USG:terminated_at": None, "OS-EXT-STS:task_state": s["task_state"],
        "OS-EXT-STS:vm_state": s["vm_state"], "OS-EXT-STS:power_state": s["power_state"],
        "os-extended-volumes:volumes_attached": [], "security_groups": [{"name": "default"}],
    }
    if s.get("fault"):
        view["fault"] = dict(s["fault"])
    if mv >= (2, 9):
        view["locked"] = False
    if mv >= (2, 19):
        view["description"] = None
    if mv >= (2, 26):
        view["tags"] = []
    if mv >= (2, 63):
        view["trusted_image_certificates"] = None
    if mv >= (2, 73):
        view["locked_reason"] = None
    if mv >= (2, 96):
        view["pinned_availability_zone"] = s["requested_zone"]
    return view


def validate_create(cloud: Cloud, body: Any, mv: tuple[int, int]) -> dict[str, Any]:
    def bad(message: str) -> ApiError:
        return ApiError(400, f"Invalid input for field/attribute {message}")

    server = body.get("server") if isinstance(body, dict) else None
    if not isinstance(server, dict):
        raise bad("server. Value: None. 'server' is a required property")
    name = server.get("name")
    if not isinstance(name, str) or not name or len(name) > 255 or name != name.strip():
        raise bad(f"name. Value: {name!r}. 'name' must be a non-empty string of at most 255 characters "
                  "without leading or trailing whitespace")
    flavor_ref = server.get("flavorRef")
    if not isinstance(flavor_ref, (str, int)) or str(flavor_ref) == "":
        raise bad("flavorRef. Value: None. 'flavorRef' is a required property")
    flavor = cloud.flavor(str(flavor_ref))
    if flavor is None:
        raise ApiError(400, f"Flavor {flavor_ref} could not be found.")
    image = server.get("imageRef")
    if not isinstance(image, str) or not image:
        raise ApiError(400, "Block Device Mapping is Invalid: Boot sequence for the instance and image/block "
                            "device mapping combination is not valid.")
    metadata = server.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("metadata. Value: %r. %r is not of type 'object'" % (metadata, metadata))
    # Nova's JSON schema: patternProperties (values) are checked before additionalProperties
    # (keys); the messages are jsonschema's, wrapped as Nova wraps them.
    for k, v in metadata.items():
        if not METADATA_KEY.match(k):
            continue
        if not isinstance(v, str):
            raise bad(f"{k}. Value: {v}. {v!r} is not of type 'string'")
        if len(v) > 255:
            raise bad(f"{k}. Value: {v}. {v!r} is too long")
    wrong = sorted(k for k in metadata if not METADATA_KEY.match(k))
    if wrong:
        raise bad("metadata. Value: %r. %s %s not match any of the regexes: '%s'"
                  % (metadata, ", ".join(map(repr, wrong)), "does" if len(wrong) == 1 else "do", METADATA_KEY.pattern))
    if len(metadata) > 128:
        raise ApiError(403, "Quota exceeded for metadata_items: Requested %d, but already used 0 of 128 "
                            "metadata_items" % len(metadata))
    user_data = server.get("user_data")
    decoded = ""
    if user_data is not None:
        if not isinstance(user_data, str):
            raise bad(f"user_data. Value: {user_data}. {user_data!r} is not of type 'string'")
        if len(user_data) > 65535:
            raise bad(f"user_data. Value: {user_data}. {user_data!r} is too long")
        # Nova's 'base64' format check is oslo's decode_as_bytes, i.e. base64.b64decode
        # without validate=True: characters outside the alphabet are dropped, and only bad
        # padding or length is refused ("%%%" passes and decodes to nothing). Nova stores
        # user_data as sent; the metadata service decodes it the same lenient way.
        try:
            decoded = base64.b64decode(user_data).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            raise bad(f"user_data. Value: {user_data}. {user_data!r} is not a 'base64'") from None
    zone = server.get("availability_zone")
    if zone is not None:
        if not isinstance(zone, str) or zone.split(":")[0] not in cloud.zones:
            raise ApiError(400, "The requested availability zone is not available")
        zone = zone.split(":")[0]
    networks = server.get("networks")
    if networks is None and mv >= (2, 37):
        raise bad("server. Value: ... 'networks' is a required property")
    if networks not in (None, "auto", "none"):
        if not isinstance(networks, list) or (mv >= (2, 37) and not networks):
            raise bad("networks. Value: %r. networks must be 'auto', 'none' or a list" % (networks,))
        for n in networks:
            net = n.get("uuid") if isinstance(n, dict) else None
            if not isinstance(net, str):
                raise ApiError(400, "Bad networks format: network uuid is not in proper format (%s)" % net)
            try:
                uuid.UUID(net)
            except ValueError:
                raise ApiError(400, "Bad networks format: network uuid is not in proper format (%s)" % net) from None
    elif networks in ("auto", "none") and mv < (2, 37):
        raise bad("networks. Value: %r. %r is not of type 'array'" % (networks, networks))
    return {"name": name, "flavor": flavor, "image": image, "metadata": dict(metadata), "user_data": decoded,
            "zone": zone, "networks": networks}


def create_server(cloud: Cloud, spec: dict[str, Any]) -> dict[str, Any]:
    now = time.monotonic()
    wall = time.time()
    with cloud.lock:
        if cloud.quota_remaining is not None:
            if cloud.quota_remaining > 0:
                cloud.quota_remaining -= 1
                if cloud.quota_remaining == 0:
                    cloud.quota_remaining = None
            count, _, _ = cloud.usage(now)
            raise ApiError(403, "Quota exceeded for instances: Requested 1, but already used %d of %d instances"
                           % (max(count, cloud.max_instances), cloud.max_instances))
        count, cores, ram = cloud.usage(now)
        for resource, used, asked, limit in (("instances", count, 1, cloud.max_instances),
                                             ("cores", cores, spec["flavor"]["vcpus"], cloud.max_cores),
                                             ("ram", ram, spec["flavor"]["ram"], cloud.max_ram)):
            if used + asked > limit:
                raise ApiError(403, "Quota exceeded for %s: Requested %d, but already used %d of %d %s"
                               % (resource, asked, used, limit, resource))
        fate = None
        for rule in cloud.capacity:
            if rule["flavor"] in (spec["flavor"]["name"], spec["flavor"]["id"]):
                fate = NO_VALID_HOST
                if rule["remaining"] is not None:
                    rule["remaining"] -= 1
                    if rule["remaining"] <= 0:
                        cloud.capacity.remove(rule)
                break
        zone = spec["zone"]
        if zone is None:
            up = [z for z in cloud.zones if z not in cloud.outages]
            chosen = up[len(cloud.servers) % len(up)] if up else cloud.zones[0]
            if not up:
                fate = NO_VALID_HOST
        else:
            chosen = zone
            if zone in cloud.outages:
                fate = NO_VALID_HOST
        server_id = str(uuid.uuid4())
        addresses: dict[str, Any] = {}
        if spec["networks"] != "none":
            n = next(cloud.ips)
            addresses = {"private": [{"version": 4, "addr": f"10.0.{n // 250}.{n % 250 + 2}", "OS-EXT-IPS:type": "fixed",
                                      "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:%02x:%02x:%02x" % (n >> 16 & 255, n >> 8 & 255, n & 255)}]}
        schedule = min(cloud.schedule_seconds, cloud.build_seconds)
        s = {
            "id": server_id, "name": spec["name"], "flavor": spec["flavor"], "image": spec["image"],
            "metadata": spec["metadata"], "user_data": spec["user_data"], "requested_zone": zone, "zone": chosen,
            "status": "BUILD", "vm_state": "building", "task_state": "scheduling", "power_state": 0,
            "created": wall, "updated": wall, "scheduled_at": now + schedule, "active_at": now + cloud.build_seconds,
            "fate": fate, "addresses": {}, "planned_addresses": addresses, "placed": False, "delete_at": None,
            "deleted": False, "order": len(cloud.servers),
            "host_id": secrets.token_hex(28),
        }
        cloud.servers[server_id] = s
        log.info("server created id=%s flavor=%s zone=%s fate=%s", server_id, spec["flavor"]["name"], chosen, fate)
        return s


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "canopy-openstack/1"
    cloud: Cloud
    log_requests = False

    # ---- plumbing ----
    def log_message(self, fmt: str, *args: Any) -> None:
        if self.log_requests:
            log.info("%s %s", self.address_string(), fmt % args)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if code != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Openstack-Request-Id", "req-" + str(uuid.uuid4()))
        self.end_headers()
        if code != 204 and self.command != "HEAD":
            self.wfile.write(data)

    def read_json(self, error: type[ApiError] = ApiError) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise error(400, "Malformed request body") from None

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def do_PUT(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        path = re.sub(r"/+$", "", url.path) or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        extra: dict[str, str] = {}
        try:
            if path.startswith("/_canopy"):
                code, body = self.control(path[len("/_canopy"):] or "/")
            elif path in ("/v3", "/identity/v3") or path.startswith(("/v3/", "/identity/v3/")):
                code, body, extra = self.keystone(path.split("/v3", 1)[1] or "/")
            elif path in ("/identity", "/"):
                code, body = 300, {"versions": {"values": [keystone_version(self.base)["version"]]}}
            elif path.startswith("/compute"):
                code, body, extra = self.nova(path[len("/compute"):] or "/", url.query, query)
            else:
                raise ApiError(404, "Not Found")
        except ApiError as e:
            code, body, extra = e.code, e.body(), e.headers
        except Exception as e:  # a bug in the fake: answer like Nova does, log it
            log.exception("unhandled error on %s %s", self.command, self.path)
            code, body = 500, {"computeFault": {"code": 500, "message": f"Unexpected API Error: {e!r}"}}
        self.send_json(code, body, extra)

    # ---- Keystone ----
    def keystone(self, path: str) -> tuple[int, Any, dict[str, str]]:
        cloud = self.cloud
        if path == "/" and self.command == "GET":
            return 200, keystone_version(self.base), {}
        if path == "/auth/tokens" and self.command == "POST":
            token_id, body = issue_token(cloud, self.base, self.read_json(KeystoneError))
            log.info("token issued methods=%s", ",".join(body["token"]["methods"]))
            return 201, body, {"X-Subject-Token": token_id}
        record = self.token(KeystoneError)
        if path == "/auth/tokens" and self.command == "GET":
            subject = cloud.tokens.get(self.headers.get("X-Subject-Token") or "")
            if subject is None or subject["expires"] < time.time():
                raise KeystoneError(404, "Could not find token.")
            return 200, token_body(cloud, self.base, subject), {"X-Subject-Token": self.headers["X-Subject-Token"]}
        m = re.fullmatch(r"/users/([^/]+)/application_credentials", path)
        if m and self.command == "POST":
            if m.group(1) != cloud.user["id"]:
                raise KeystoneError(403, "You are not authorized to perform the requested action.")
            if record["app_cred"] is not None and not record["app_cred"]["unrestricted"]:
                raise KeystoneError(403, "Using method 'application_credential' is not allowed for managing "
                                         "additional application credentials.")
            if record["project"] is None:
                raise KeystoneError(401, "Application credentials must be created with a project-scoped token.")
            ac = self.read_json(KeystoneError).get("application_credential")
            if not isinstance(ac, dict) or not isinstance(ac.get("name"), str) or not ac["name"]:
                raise KeystoneError(400, "Invalid input for field 'application_credential/name': 'name' is a required property")
            cred = {"id": uuid.uuid4().hex, "name": ac["name"], "secret": ac.get("secret") or secrets.token_urlsafe(64),
                    "user_id": cloud.user["id"], "project_id": cloud.project["id"],
                    "unrestricted": bool(ac.get("unrestricted", False))}
            with cloud.lock:
                cloud.app_creds[cred["id"]] = cred
            view = dict(cred, description=ac.get("description"), expires_at=None, roles=[{"id": "member-role", "name": "member"}],
                        links={"self": f"{self.base}/v3/users/{cloud.user['id']}/application_credentials/{cred['id']}"})
            return 201, {"application_credential": view}, {}
        raise KeystoneError(404, f"Could not find resource {path}.")

    def token(self, error: type[ApiError] = ApiError) -> dict[str, Any]:
        token = self.headers.get("X-Auth-Token") or ""
        record = self.cloud.tokens.get(token)
        if record is None or record["expires"] < time.time():
            raise error(401, UNAUTHENTICATED, {"WWW-Authenticate": f'Keystone uri="{self.base}/identity"'})
        return record

    # ---- Nova ----
    def nova(self, path: str, raw_query: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        cloud = self.cloud
        if path == "/" and self.command == "GET":
            return 200, nova_versions(self.base), {}
        if path in ("/v2.1", "/v2.1/") and self.command == "GET":
            return 200, {"version": nova_v21(self.base)}, {}
        if not path.startswith("/v2.1/"):
            raise ApiError(404, "Not Found")
        path = path[len("/v2.1"):]
        # keystonemiddleware sits in front of Nova: no valid token is its 401 (Keystone's
        # error body, WWW-Authenticate, no microversion headers), whatever the version asked.
        record = self.token(KeystoneError)
        mv = parse_microversion(self.headers)
        version = "%d.%d" % mv
        headers = {"OpenStack-API-Version": f"compute {version}", "X-OpenStack-Nova-API-Version": version,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"}
        # A legacy /v2.1/{project_id}/... prefix is accepted and dropped, as Nova does.
        pid = cloud.project["id"]
        if path.startswith(f"/{pid}/") or path == f"/{pid}":
            path = path[len(pid) + 1:] or "/"
        try:
            if record["project"] is None:
                raise ApiError(403, "Policy doesn't allow this operation: the token is not scoped to a project.")
            with cloud.lock:
                if cloud.throttle_remaining is not None:
                    cloud.throttle_remaining -= 1
                    if cloud.throttle_remaining == 0:
                        cloud.throttle_remaining = None
                    raise ApiError(429, "This request was rate-limited.", {"Retry-After": "1"})
            code, body = self.nova_route(path, raw_query, query, mv)
        except ApiError as e:
            e.headers = {**headers, **e.headers}
            raise
        return code, body, headers

    def nova_route(self, path: str, raw_query: str, query: dict[str, list[str]], mv: tuple[int, int]) -> tuple[int, Any]:
        cloud, base, method = self.cloud, self.base, self.command
        now = time.monotonic()
        if path == "/servers" and method == "POST":
            spec = validate_create(cloud, self.read_json(), mv)
            s = create_server(cloud, spec)
            link = f"{base}/compute/v2.1/servers/{s['id']}"
            return 202, {"server": {"id": s["id"], "links": [{"rel": "self", "href": link}],
                                    "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
                                    "adminPass": secrets.token_urlsafe(9)}}
        if path in ("/servers", "/servers/detail") and method == "GET":
            return 200, self.list_servers(path, query, mv, now)
        m = re.fullmatch(r"/servers/([^/]+)", path)
        if m:
            with cloud.lock:
                s = cloud.servers.get(m.group(1))
                if s is not None:
                    cloud.refresh(s, now)
                if s is None or s["deleted"]:
                    raise ApiError(404, f"Instance {m.group(1)} could not be found.")
                if method == "GET":
                    return 200, {"server": server_view(cloud, base, s, mv)}
                if method == "DELETE":
                    cloud.delete(s, now)
                    log.info("server deleted id=%s (%s)", s["id"], "gone" if s["deleted"] else "deleting")
                    return 204, None
            raise ApiError(405, "The method specified is not allowed for this resource.")
        if path in ("/flavors", "/flavors/detail") and method == "GET":
            detail = path.endswith("detail")
            return 200, {"flavors": [self.flavor_view(f, mv, detail) for f in cloud.flavors]}
        m = re.fullmatch(r"/flavors/([^/]+)", path)
        if m and method == "GET":
            f = next((f for f in cloud.flavors if f["id"] == m.group(1)), None)
            if f is None:
                raise ApiError(404, f"Flavor {m.group(1)} could not be found.")
            return 200, {"flavor": self.flavor_view(f, mv, True)}
        if path == "/os-availability-zone" and method == "GET":
            with cloud.lock:
                return 200, {"availabilityZoneInfo": [
                    {"zoneName": z, "zoneState": {"available": z not in cloud.outages}, "hosts": None} for z in cloud.zones]}
        if path == "/limits" and method == "GET":
            with cloud.lock:
                count, cores, ram = cloud.usage(now)
                absolute = {"maxServerMeta": 128, "maxTotalKeypairs": 100,
                            "maxServerGroups": 10, "maxServerGroupMembers": 10, "maxTotalCores": cloud.max_cores,
                            "maxTotalInstances": cloud.max_instances, "maxTotalRAMSize": cloud.max_ram,
                            "totalCoresUsed": cores, "totalInstancesUsed": count, "totalRAMUsed": ram,
                            "totalServerGroupsUsed": 0}
                if mv < (2, 39):
                    absolute["maxImageMeta"] = 128  # the image-metadata proxy went at 2.39
                if mv < (2, 57):
                    absolute.update(maxPersonality=5, maxPersonalitySize=10240)
                if mv < (2, 36):
                    absolute.update(maxSecurityGroups=10, maxSecurityGroupRules=20, maxTotalFloatingIps=10,
                                    totalFloatingIpsUsed=0, totalSecurityGroupsUsed=0)
                return 200, {"limits": {"rate": [], "absolute": absolute}}
        raise ApiError(404, "Not Found")

    def flavor_view(self, f: dict[str, Any], mv: tuple[int, int], detail: bool) -> dict[str, Any]:
        link = f"{self.base}/compute/v2.1/flavors/{f['id']}"
        view: dict[str, Any] = {"id": f["id"], "name": f["name"],
                                "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link.replace("/v2.1", "")}]}
        if mv >= (2, 55):
            view["description"] = None
        if detail:
            view.update(vcpus=f["vcpus"], ram=f["ram"], disk=f["disk"], rxtx_factor=1.0,
                        swap=0 if mv >= (2, 75) else "", **{"OS-FLV-EXT-DATA:ephemeral": 0,
                                                           "OS-FLV-DISABLED:disabled": False,
                                                           "os-flavor-access:is_public": True})
            if mv >= (2, 61):
                view["extra_specs"] = {}
        return view

    def list_servers(self, path: str, query: dict[str, list[str]], mv: tuple[int, int], now: float) -> dict[str, Any]:
        cloud = self.cloud

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit_text = one("limit")
        limit = MAX_LIMIT
        if limit_text is not None:
            if not limit_text.isdigit():
                raise ApiError(400, f"Invalid input for query parameters limit. Value: {limit_text}. "
                                    f"'{limit_text}' does not match '^[0-9]*$'")
            limit = min(int(limit_text), MAX_LIMIT)
        with cloud.lock:
            servers = sorted(cloud.live(now), key=lambda s: (s["created"], s["order"]), reverse=True)
            name = one("name")
            if name is not None:
                try:
                    pattern = re.compile(name)
                except re.error:
                    raise ApiError(400, f"Invalid input for query parameters name: bad regex {name!r}") from None
                servers = [s for s in servers if pattern.search(s["name"])]
            status = one("status")
            if status is not None:
                servers = [s for s in servers if s["status"] == status.upper()]
            for key in ("flavor", "image"):
                value = one(key)
                if value is not None:
                    servers = [s for s in servers if (s["flavor"]["id"] if key == "flavor" else s["image"]) == value]
            ignored = set(query) - {"limit", "marker", "name", "status", "flavor", "image"}
            if ignored:
                log.info("ignoring unsupported list filters %s (as Nova does for non-admin users)", sorted(ignored))
            marker = one("marker")
            if marker is not None:
                index = next((i for i, s in enumerate(servers) if s["id"] == marker), None)
                if index is None:
                    raise ApiError(400, f"marker [{marker}] not found")
                servers = servers[index + 1:]
            page = servers[:limit]
            detail = path.endswith("detail")
            views = []
            for s in page:
                if detail:
                    views.append(server_view(cloud, self.base, s, mv))
                else:
                    link = f"{self.base}/compute/v2.1/servers/{s['id']}"
                    views.append({"id": s["id"], "name": s["name"],
                                  "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link.replace("/v2.1", "")}]})
        body: dict[str, Any] = {"servers": views}
        if page and len(page) == limit:
            params = [(k, v) for k, vs in query.items() if k != "marker" for v in vs]
            if "limit" not in query:
                params.append(("limit", str(limit)))
            params.append(("marker", page[-1]["id"]))
            body["servers_links"] = [{"rel": "next", "href": f"{self.base}/compute/v2.1{path}?{urlencode(params)}"}]
        return body

    # ---- control ----
    def control(self, path: str) -> tuple[int, Any]:
        cloud, method = self.cloud, self.command
        if path == "/health" and method == "GET":
            return 200, {"ok": True}
        if path == "/instances" and method == "GET":
            return 200, self.instances()
        if path == "/credentials" and method == "GET":
            return 200, {"username": cloud.user["name"], "user_domain": DOMAIN["name"], "project": cloud.project["name"],
                         "project_domain": DOMAIN["name"], "project_id": cloud.project["id"], "user_id": cloud.user["id"]}
        if path == "/faults" and method == "GET":
            with cloud.lock:
                return 200, {"build_seconds": cloud.build_seconds, "quota_remaining": cloud.quota_remaining,
                             "capacity": cloud.capacity, "az_outage": sorted(cloud.outages),
                             "throttle_remaining": cloud.throttle_remaining}
        if method != "POST":
            raise ControlError(404, f"no control route {method} {path}")
        body = self.read_json(ControlError)
        if not isinstance(body, dict):
            raise ControlError(400, "body: expected a JSON object")

        def count() -> int | None:
            c = body.get("count")
            if c is None:
                return None
            if not isinstance(c, int) or isinstance(c, bool) or c < 1:
                raise ControlError(400, "count: expected a positive integer")
            return c

        with cloud.lock:
            if path == "/faults/fail":
                sid = body.get("instance_id")
                if not isinstance(sid, str) or not sid:
                    raise ControlError(400, "instance_id: expected a server id")
                s = cloud.servers.get(sid)
                if s is not None:
                    cloud.refresh(s, time.monotonic())
                if s is None or s["delete_at"] is not None:
                    raise ControlError(404, f"instance_id: no server {sid} (or it is being deleted)")
                if s["status"] == "ERROR":
                    raise ControlError(409, f"instance_id: server {sid} is already ERROR")
                cloud.set_error(s, HOST_FAILURE, time.time())
                log.info("fault: server %s failed", sid)
                return 200, {"ok": True}
            if path == "/faults/quota":
                c = count()
                cloud.quota_remaining = -1 if c is None else c
                return 200, {"ok": True}
            if path == "/faults/capacity":
                itype = body.get("instance_type")
                if not isinstance(itype, str) or cloud.flavor_named(itype) is None:
                    raise ControlError(400, f"instance_type: expected a flavor name, got {itype!r}")
                cloud.capacity.append({"flavor": itype, "remaining": count()})
                return 200, {"ok": True}
            if path == "/faults/pending":
                seconds = body.get("seconds")
                if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                    raise ControlError(400, "seconds: expected a non-negative number")
                cloud.build_seconds = float(seconds) if seconds > 0 else cloud.default_build_seconds
                return 200, {"ok": True}
            if path == "/faults/az_outage":
                zone = body.get("zone")
                if zone not in cloud.zones:
                    raise ControlError(400, f"zone: expected one of {cloud.zones}, got {zone!r}")
                cloud.outages.add(zone)
                return 200, {"ok": True}
            if path == "/faults/throttle":
                c = count()
                cloud.throttle_remaining = 1 if c is None else c
                return 200, {"ok": True}
            if path == "/faults/clear":
                cloud.clear_faults()
                return 200, {"ok": True}
        raise ControlError(404, f"no control route POST {path}")

    def instances(self) -> list[dict[str, Any]]:
        cloud = self.cloud
        states = {"BUILD": "pending", "ACTIVE": "running", "ERROR": "terminated"}
        out = []
        with cloud.lock:
            now = time.monotonic()
            for s in sorted(cloud.servers.values(), key=lambda s: s["order"]):
                cloud.refresh(s, now)
                out.append({
                    "instance_id": s["id"], "region": cloud.region,
                    "state": "terminated" if s["deleted"] else "stopping" if s["delete_at"] is not None
                    else states.get(s["status"], "running"),
                    "instance_type": s["flavor"]["name"], "availability_zone": s["zone"],
                    "user_data": s["user_data"], "spot": False, "vcpus": s["flavor"]["vcpus"],
                    "memory_mib": s["flavor"]["ram"],
                })
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (only this one)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--region", default="RegionOne")
    parser.add_argument("--zones", default="nova,az-2", help="availability zones, comma-separated")
    parser.add_argument("--max-instances", type=int, default=10, help="quota: instances (Nova's default 10)")
    parser.add_argument("--max-cores", type=int, default=20, help="quota: cores (Nova's default 20)")
    parser.add_argument("--max-ram", type=int, default=51200, help="quota: RAM MiB (Nova's default 51200)")
    parser.add_argument("--build-seconds", type=float, default=0.3, help="BUILD -> ACTIVE time")
    parser.add_argument("--schedule-seconds", type=float, default=0.05, help="time in task_state scheduling")
    parser.add_argument("--delete-seconds", type=float, default=0.3,
                        help="time a deleted server stays visible with task_state deleting (0: gone at once)")
    parser.add_argument("--username", default="canopy")
    parser.add_argument("--password", default="canopy-secret")
    parser.add_argument("--project", default="canopy")
    parser.add_argument("--app-cred-id", default="canopy-app-cred", help="a preset application credential ('' for none)")
    parser.add_argument("--app-cred-secret", default="canopy-app-cred-secret")
    parser.add_argument("--log-requests", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args(argv)
    if not args.zones.strip(","):
        parser.error("--zones: at least one zone")

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Handler.cloud = Cloud(args)
    Handler.log_requests = args.log_requests
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log.info("listening on %s:%s region=%s zones=%s", args.host, port, args.region, args.zones)
    sys.stdout.write(f"ready http://{args.host}:{port}\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        if not thread.is_alive():
            log.error("HTTP server thread died")
            return 1
    server.shutdown()
    server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
