#!/usr/bin/env python3
"""Keystone and Nova objects for the opt-in real-cloud run (run.sh calls this; stdlib only).

  cloud.py keystone KEYSTONE_URL ADMIN_PASSWORD SERVICE_PASSWORD USER_PASSWORD NOVA_URL PLACEMENT_URL STANDINS_URL
      projects service + canopy, users nova/placement (admin + service roles in service) and
      canopy (member in canopy), services + endpoints for compute, placement, image, network.
  cloud.py flavors KEYSTONE_URL ADMIN_PASSWORD
      the m1.* flavors (real Nova has none), created as the admin through Nova's API.
  cloud.py wait-zone KEYSTONE_URL USER_PASSWORD SECONDS
      waits until the canopy user sees the "nova" zone available (the compute host is up).
"""
import json
import sys
import time
import urllib.error
import urllib.request

REGION = "RegionOne"


def call(method, url, body=None, token=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, dict(response.headers), (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return error.code, dict(error.headers), parsed


def token(keystone, user, password, project):
    status, headers, body = call("POST", f"{keystone}/v3/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    if status != 201:
        sys.exit(f"cloud.py: token for {user}: {status} {body}")
    return headers.get("X-Subject-Token") or headers.get("x-subject-token"), body["token"]


def ensure(keystone, tok, kind, key, body, **match):
    _, _, listed = call("GET", f"{keystone}/v3/{kind}", token=tok)
    for item in listed.get(kind, []):
        if all(item.get(k) == v for k, v in match.items()):
            return item["id"]
    status, _, created = call("POST", f"{keystone}/v3/{kind}", {key: body}, token=tok)
    if status not in (200, 201):
        sys.exit(f"cloud.py: create {key} {body}: {status} {created}")
    return created[key]["id"]


def keystone_setup(keystone, admin_password, service_password, user_password, nova, placement, standins):
    tok, _ = token(keystone, "admin", admin_password, "admin")
    service = ensure(keystone, tok, "projects", "project", {"name": "service", "domain_id": "default"}, name="service")
    canopy = ensure(keystone, tok, "projects", "project", {"name": "canopy", "domain_id": "default"}, name="canopy")
    roles = {name: ensure(keystone, tok, "roles", "role", {"name": name}, name=name)
             for name in ("admin", "member", "reader", "service")}

    def user(name, password, project, role_names):
        uid = ensure(keystone, tok, "users", "user",
                     {"name": name, "password": password, "domain_id": "default"}, name=name)
        for role in role_names:
            status, _, body = call("PUT", f"{keystone}/v3/projects/{project}/users/{uid}/roles/{roles[role]}", token=tok)
            if status not in (200, 204):
                sys.exit(f"cloud.py: grant {role} to {name}: {status} {body}")

    user("nova", service_password, service, ["admin", "service"])
    user("placement", service_password, service, ["admin", "service"])
    user("canopy", user_password, canopy, ["member"])
    for kind, name, url in (("compute", "nova", f"{nova}/v2.1"), ("placement", "placement", placement),
                            ("image", "glance", standins), ("network", "neutron", standins)):
        sid = ensure(keystone, tok, "services", "service", {"type": kind, "name": name}, type=kind)
        for interface in ("public", "internal"):
            ensure(keystone, tok, "endpoints", "endpoint",
                   {"service_id": sid, "interface": interface, "url": url, "region_id": REGION},
                   service_id=sid, interface=interface)


def compute_url(body):
    for entry in body["catalog"]:
        if entry["type"] == "compute":
            for endpoint in entry["endpoints"]:
                if endpoint["interface"] == "public":
                    return endpoint["url"]
    sys.exit("cloud.py: no compute endpoint in the catalog")


def flavors(keystone, admin_password):
    tok, body = token(keystone, "admin", admin_password, "admin")
    nova = compute_url(body)
    _, _, listed = call("GET", f"{nova}/flavors", token=tok)
    have = {f["name"] for f in listed.get("flavors", [])}
    for fid, name, vcpus, ram, disk in (("1", "m1.tiny", 1, 512, 1), ("2", "m1.small", 1, 2048, 20),
                                        ("3", "m1.medium", 2, 4096, 40), ("4", "m1.large", 4, 8192, 80)):
        if name in have:
            continue
        status, _, created = call("POST", f"{nova}/flavors", {"flavor": {
            "id": fid, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk}}, token=tok)
        if status != 200:
            sys.exit(f"cloud.py: flavor {name}: {status} {created}")


def wait_zone(keystone, user_password, seconds):
    deadline = time.time() + float(seconds)
    while True:
        tok, body = token(keystone, "canopy", user_password, "canopy")
        status, _, zones = call("GET", f"{compute_url(body)}/os-availability-zone", token=tok)
        names = [z["zoneName"] for z in zones.get("availabilityZoneInfo", []) if z["zoneState"]["available"]]
        if "nova" in names:
            return
        if time.time() > deadline:
            sys.exit(f"cloud.py: zone nova not available after {seconds}s: {status} {zones}")
        time.sleep(1)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"keystone": keystone_setup, "flavors": flavors, "wait-zone": wait_zone}[command](*args)
