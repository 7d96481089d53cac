#!/usr/bin/env python3
"""Sends the same Keystone + Nova calls to the fake and to a real cloud; prints the differences.

  compare.py FAKE_URL REAL_KEYSTONE_URL(no /v3) REAL_USER REAL_PASSWORD REAL_PROJECT REAL_IMAGE
      FAKE_URL: a running canopy_openstack.py ("ready" URL); the real one as run.sh prints it
      with CANOPY_OPENSTACK_REAL_KEEP=1.

For each call: the status codes, and the JSON key paths one side has and the other lacks
(values are not compared: ids, times and addresses differ by nature). Stdlib only.
"""
import json
import sys
import time
import urllib.error
import urllib.request

V = "compute 2.47"


def call(method, url, body=None, token=None, version=V):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    if version:
        request.add_header("OpenStack-API-Version", version)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = {"<non-json>": raw[:200].decode(errors="replace")}
    return status, headers, parsed


def paths(value, prefix=""):
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            # Collapse map keys that are data, not schema.
            key = "*" if prefix.endswith(("metadata", "addresses")) else k
            out.add(f"{prefix}/{key}")
            out |= paths(v, f"{prefix}/{key}")
    elif isinstance(value, list):
        for v in value[:3]:
            out |= paths(v, f"{prefix}[]")
    return out


class Cloud:
    def __init__(self, keystone, user, password, project, image):
        self.image = image
        status, headers, body = call("POST", f"{keystone}/v3/auth/tokens", {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}, version=None)
        assert status == 201, (status, body)
        self.token = headers.get("X-Subject-Token")
        self.token_body = body
        self.nova = next(e["url"] for c in body["token"]["catalog"] if c["type"] == "compute"
                         for e in c["endpoints"] if e["interface"] == "public")
        self.keystone = keystone

    def __call__(self, method, path, body=None, token=True, version=V):
        base = self.nova if not path.startswith("keystone:") else self.keystone
        path = path.removeprefix("keystone:")
        return call(method, base + path, body, self.token if token else None, version)

    def server_body(self, name, **extra):
        server = {"name": name, "imageRef": self.image, "flavorRef": self.flavor, "networks": "auto",
                  "metadata": {"canopy:cluster": "cmp", "canopy:machine": name}, "user_data": "ZWNobyBoaQ=="}
        server.update(extra)
        return {"server": server}

    def wait(self, sid, until, seconds=30):
        deadline = time.time() + seconds
        while True:
            status, _, body = self("GET", f"/servers/{sid}")
            if status == 404 or (body and until(body["server"])) or time.time() > deadline:
                return status, body
            time.sleep(0.3)


def main():
    fake_url, keystone, user, password, project, image = sys.argv[1:]
    fake = Cloud(fake_url, "canopy", "canopy-secret", "canopy", "cirros-0.6.2")
    real = Cloud(keystone, user, password, project, image)
    for c in (fake, real):
        _, _, flavors = c("GET", "/flavors")
        c.flavor = next(f["id"] for f in flavors["flavors"] if f["name"] == "m1.small")

    results = []

    def compare(label, f, r):
        (fs, fh, fb), (rs, rh, rb) = f, r
        diffs = []
        if fs != rs:
            diffs.append(f"status fake {fs} real {rs}")
        fp, rp = paths(fb), paths(rb)
        if fp - rp:
            diffs.append(f"only fake: {sorted(fp - rp)}")
        if rp - fp:
            diffs.append(f"only real: {sorted(rp - fp)}")
        if fs >= 400 or rs >= 400:
            diffs.append(f"bodies: fake {json.dumps(fb)[:300]} | real {json.dumps(rb)[:300]}")
        results.append((label, diffs))

    both = lambda *a, **k: (fake(*a, **k), real(*a, **k))  # noqa: E731
    compare("GET compute root (no token)", *[c("GET", "/", token=False, version=None) for c in (fake, real)])
    compare("GET /servers without token", *both("GET", "/servers", token=False))
    compare("GET /servers at 2.999", *both("GET", "/servers", version="compute 2.999"))
    compare("GET /servers bad version", *both("GET", "/servers", version="compute x.y"))
    compare("GET /flavors/detail", *both("GET", "/flavors/detail"))
    compare("GET /os-availability-zone", *both("GET", "/os-availability-zone"))
    compare("GET /limits", *both("GET", "/limits"))
    compare("GET unknown server (not a uuid)", *both("GET", "/servers/i-0123456789abcdef0"))
    compare("GET unknown server (uuid)", *both("GET", "/servers/00000000-0000-4000-8000-000000000000"))
    compare("DELETE unknown server", *both("DELETE", "/servers/00000000-0000-4000-8000-000000000000"))
    compare("POST no networks at 2.47", *[c("POST", "/servers", {"server": {
        k: v for k, v in c.server_body("nonet")["server"].items() if k != "networks"}}) for c in (fake, real)])
    compare("POST bad metadata key", *[c("POST", "/servers", c.server_body("badkey", metadata={"canopy/x": "1"}))
                                       for c in (fake, real)])
    compare("POST unknown flavor", *[c("POST", "/servers", c.server_body("noflavor", flavorRef="999"))
                                     for c in (fake, real)])
    compare("POST bad user_data", *[c("POST", "/servers", c.server_body("baddata", user_data="%%%"))
                                    for c in (fake, real)])
    compare("POST unknown zone", *[c("POST", "/servers", c.server_body("nozone", availability_zone="nowhere"))
                                   for c in (fake, real)])
    created = [c("POST", "/servers", c.server_body("cmp-1", availability_zone="nova")) for c in (fake, real)]
    compare("POST /servers (ok)", *created)
    ids = [b["server"]["id"] for _, _, b in created]
    compare("GET /servers/{id} right after create", fake("GET", f"/servers/{ids[0]}"), real("GET", f"/servers/{ids[1]}"))
    active = [c.wait(i, lambda s: s["status"] != "BUILD") for c, i in zip((fake, real), ids)]
    compare("GET /servers/{id} when ACTIVE", fake("GET", f"/servers/{ids[0]}"), real("GET", f"/servers/{ids[1]}"))
    results.append(("status after build", [f"fake {active[0][1]['server']['status']} real {active[1][1]['server']['status']}"]))
    second = [c("POST", "/servers", c.server_body("cmp-2")) for c in (fake, real)]
    ids2 = [b["server"]["id"] for _, _, b in second]
    compare("GET /servers/detail?limit=1", *both("GET", "/servers/detail?limit=1"))
    compare("GET /servers?limit=1", *both("GET", "/servers?limit=1"))
    compare("GET /servers/detail?marker=unknown", *both("GET", "/servers/detail?marker=00000000-0000-4000-8000-000000000000"))
    compare("GET /servers/detail?limit=0", *both("GET", "/servers/detail?limit=0"))
    compare("GET /servers/detail?limit=-1", *both("GET", "/servers/detail?limit=-1"))
    f1, r1 = both("GET", "/servers/detail?limit=1")
    order = []
    for (s, _, b), c, mine in ((f1, "fake", ids2[0]), (r1, "real", ids2[1])):
        order.append(f"{c}: first of limit=1 is the {'newest' if b['servers'][0]['id'] == mine else 'oldest'}; "
                     f"servers_links={b.get('servers_links')}")
    results.append(("list order and paging", order))
    deleted = [c("DELETE", f"/servers/{i}") for c, i in zip((fake, real), ids)]
    compare("DELETE /servers/{id}", *deleted)
    compare("GET right after DELETE", fake("GET", f"/servers/{ids[0]}"), real("GET", f"/servers/{ids[1]}"))
    after = [c("GET", f"/servers/{i}") for c, i in zip((fake, real), ids)]
    results.append(("right after DELETE", [f"fake {after[0][0]} {(after[0][2] or {}).get('server', {}).get('status')}/"
                                           f"{(after[0][2] or {}).get('server', {}).get('OS-EXT-STS:task_state')}",
                                           f"real {after[1][0]} {(after[1][2] or {}).get('server', {}).get('status')}/"
                                           f"{(after[1][2] or {}).get('server', {}).get('OS-EXT-STS:task_state')}"]))
    gone = [c.wait(i, lambda s: False, 15) for c, i in zip((fake, real), ids)]
    results.append(("after DELETE settles", [f"fake {gone[0][0]}", f"real {gone[1][0]}"]))
    compare("DELETE again", *[c("DELETE", f"/servers/{i}") for c, i in zip((fake, real), ids)])
    for c, i in zip((fake, real), ids2):
        c("DELETE", f"/servers/{i}")
    compare("keystone bad password", *[call("POST", f"{c.keystone}/v3/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "canopy", "domain": {"name": "Default"}, "password": "wrong"}}},
        "scope": {"project": {"name": "canopy", "domain": {"name": "Default"}}}}}, version=None) for c in (fake, real)])
    results.append(("token body", [f"only fake: {sorted(paths(fake.token_body) - paths(real.token_body))}",
                                   f"only real: {sorted(paths(real.token_body) - paths(fake.token_body))}"]))
    for label, diffs in results:
        print(f"== {label}: {'same' if not diffs else ''}")
        for d in diffs:
            print(f"   {d}")


if __name__ == "__main__":
    main()
