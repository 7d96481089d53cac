#!/usr/bin/env python3
"""End-to-end test of canopy_openstack.py: starts it as a subprocess on port 0 and talks to it
over HTTP with urllib (standard library only).

    python3 localstack/openstack/test_canopy_openstack.py -v
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "canopy_openstack.py")
PASSWORD_AUTH = {"auth": {
    "identity": {"methods": ["password"], "password": {"user": {
        "name": "canopy", "domain": {"name": "Default"}, "password": "canopy-secret"}}},
    "scope": {"project": {"name": "canopy", "domain": {"name": "Default"}}},
}}
APP_CRED_AUTH = {"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
    "id": "canopy-app-cred", "secret": "canopy-app-cred-secret"}}}}
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
METADATA_REGEX = "'^[a-zA-Z0-9-_:. ]{1,255}$'"


class FakeCase(unittest.TestCase):
    """Starts the fake (with ARGS) for the class, with a token, and the HTTP helpers."""

    ARGS: list[str] = []
    proc: subprocess.Popen[str]
    url: str
    token: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.proc = subprocess.Popen(
            [sys.executable, SERVER, "--host", "127.0.0.1", "--port", "0", *cls.ARGS],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert cls.proc.stdout is not None
        line = cls.proc.stdout.readline()
        if not line.startswith("ready http://127.0.0.1:"):
            cls.proc.kill()
            raise RuntimeError(f"server did not become ready: {line!r}")
        cls.url = line.split()[1]
        status, headers, body = cls.call("POST", "/v3/auth/tokens", PASSWORD_AUTH, token=None)
        assert status == 201, body
        cls.token = headers["X-Subject-Token"]

    @classmethod
    def tearDownClass(cls) -> None:
        cls.proc.send_signal(signal.SIGTERM)
        try:
            code = cls.proc.wait(timeout=10)
        finally:
            if cls.proc.poll() is None:
                cls.proc.kill()
                cls.proc.wait()
        assert code == 0, f"exit code {code} after SIGTERM"

    def setUp(self) -> None:
        self.control("faults/clear", {})

    @classmethod
    def call(cls, method: str, path: str, body: Any = None, token: str | None = "", headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(cls.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("X-Auth-Token", token or cls.token)
        for k, v in (headers or {}).items():
            request.add_header(k, v)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return response.status, dict(response.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, dict(e.headers), json.loads(raw) if raw else None

    def nova(self, method: str, path: str, body: Any = None, version: str = "2.47") -> tuple[int, dict[str, str], Any]:
        return self.call(method, "/compute/v2.1" + path, body, headers={"OpenStack-API-Version": f"compute {version}"})

    def control(self, route: str, body: Any) -> tuple[int, Any]:
        status, _, answer = self.call("POST", "/_canopy/" + route, body, token=None)
        return status, answer

    def create(self, name: str = "s", flavor: str = "2", **extra: Any) -> str:
        server = {"name": name, "imageRef": "cirros", "flavorRef": flavor, "networks": "auto",
                  "metadata": {"canopy:cluster": "c1"}, "user_data": base64.b64encode(b"#!/bin/sh\n").decode(), **extra}
        status, _, body = self.nova("POST", "/servers", {"server": server})
        self.assertEqual(status, 202, body)
        return body["server"]["id"]

    def wait_status(self, server_id: str, *wanted: str) -> dict[str, Any]:
        for _ in range(100):
            status, _, body = self.nova("GET", f"/servers/{server_id}")
            self.assertEqual(status, 200, body)
            if body["server"]["status"] in wanted:
                return body["server"]
            time.sleep(0.05)
        self.fail(f"{server_id} never reached {wanted}")

    def delete(self, *server_ids: str) -> None:
        """DELETE each, then wait until each is 404 (a placed server is `deleting` for a moment
        and counts against the quota until it is gone, as in Nova)."""
        for server_id in server_ids:
            status, _, _ = self.nova("DELETE", f"/servers/{server_id}")
            self.assertEqual(status, 204)
        for server_id in server_ids:
            for _ in range(100):
                if self.nova("GET", f"/servers/{server_id}")[0] == 404:
                    break
                time.sleep(0.05)
            else:
                self.fail(f"{server_id} still there after DELETE")



class CanopyOpenStackTest(FakeCase):
    ARGS = ["--max-instances", "6"]

    # ---- Keystone ----
    def test_keystone_version_and_token_catalog(self) -> None:
        status, _, body = self.call("GET", "/v3", token=None)
        self.assertEqual((status, body["version"]["id"]), (200, "v3.14"))
        status, headers, body = self.call("POST", "/identity/v3/auth/tokens", APP_CRED_AUTH, token=None)
        self.assertEqual(status, 201)
        self.assertTrue(headers["X-Subject-Token"])
        token = body["token"]
        self.assertEqual(token["project"]["name"], "canopy")
        self.assertEqual(token["methods"], ["application_credential"])
        compute = next(e for e in token["catalog"] if e["type"] == "compute")
        public = next(e for e in compute["endpoints"] if e["interface"] == "public")
        self.assertEqual((public["url"], public["region"]), (self.url + "/compute/v2.1", "RegionOne"))

    def test_bad_credentials_and_missing_tokens_are_401(self) -> None:
        wrong = json.loads(json.dumps(PASSWORD_AUTH))
        wrong["auth"]["identity"]["password"]["user"]["password"] = "nope"
        status, _, body = self.call("POST", "/v3/auth/tokens", wrong, token=None)
        self.assertEqual((status, body["error"]["code"]), (401, 401))
        bad_cred = {"auth": {"identity": {"methods": ["application_credential"],
                                          "application_credential": {"id": "canopy-app-cred", "secret": "x"}}}}
        self.assertEqual(self.call("POST", "/v3/auth/tokens", bad_cred, token=None)[0], 401)
        # Nova's 401 comes from keystonemiddleware: Keystone's error body, before microversions.
        unauthorized = {"error": {"code": 401, "title": "Unauthorized",
                                  "message": "The request you have made requires authentication."}}
        for token, version in ((None, "2.47"), ("made-up", "2.47"), (None, "2.999")):
            status, headers, body = self.call("GET", "/compute/v2.1/servers", token=token,
                                              headers={"OpenStack-API-Version": f"compute {version}"})
            self.assertEqual((status, body), (401, unauthorized), (token, version))
            self.assertEqual(headers["WWW-Authenticate"], f'Keystone uri="{self.url}/identity"')
            self.assertNotIn("OpenStack-API-Version", headers)

    def test_application_credentials_can_be_created_and_used(self) -> None:
        status, _, body = self.call("GET", f"/v3/auth/tokens", token="", headers={"X-Subject-Token": self.token})
        user_id = body["token"]["user"]["id"]
        status, _, body = self.call("POST", f"/v3/users/{user_id}/application_credentials",
                                    {"application_credential": {"name": "ci"}})
        self.assertEqual(status, 201, body)
        cred = body["application_credential"]
        auth = {"auth": {"identity": {"methods": ["application_credential"],
                                      "application_credential": {"id": cred["id"], "secret": cred["secret"]}}}}
        self.assertEqual(self.call("POST", "/v3/auth/tokens", auth, token=None)[0], 201)

    # ---- Nova ----
    def test_version_discovery_and_microversions(self) -> None:
        status, _, body = self.call("GET", "/compute/", token=None)
        v21 = next(v for v in body["versions"] if v["id"] == "v2.1")
        self.assertEqual((status, v21["min_version"]), (200, "2.1"))
        status, _, body = self.call("GET", "/compute/v2.1/", token=None)
        self.assertEqual(body["version"]["version"], v21["version"])
        # Nova 34 has 2.104, but 2.98/2.100/2.102 change shapes the fake does not model.
        self.assertEqual(v21["version"], "2.96")
        self.assertEqual(self.nova("GET", "/flavors", version="2.97")[0], 406)
        self.assertEqual(self.nova("GET", "/flavors", version="latest")[1]["OpenStack-API-Version"], "compute 2.96")
        status, headers, _ = self.nova("GET", "/flavors", version="2.60")
        self.assertEqual((status, headers["OpenStack-API-Version"]), (200, "compute 2.60"))
        status, _, body = self.call("GET", "/compute/v2.1/flavors", headers={"X-OpenStack-Nova-API-Version": "2.999"})
        self.assertEqual((status, body["computeFault"]["code"]), (406, 406))
        self.assertEqual(self.nova("GET", "/flavors", version="two")[0], 400)
        status, headers, _ = self.call("GET", "/compute/v2.1/flavors")
        self.assertEqual(headers["X-OpenStack-Nova-API-Version"], "2.1")

    def test_server_lifecycle_and_shapes(self) -> None:
        server_id = self.create("life", availability_zone="az-2")
        status, _, body = self.nova("GET", f"/servers/{server_id}")
        self.assertEqual(body["server"]["status"], "BUILD")
        self.assertEqual(body["server"]["addresses"], {})  # no address until the build is done
        server = self.wait_status(server_id, "ACTIVE")
        self.assertEqual(server["OS-EXT-AZ:availability_zone"], "az-2")
        self.assertEqual(server["flavor"]["original_name"], "m1.small")
        self.assertEqual(server["metadata"], {"canopy:cluster": "c1"})
        self.assertIsNone(server["OS-EXT-STS:task_state"])
        self.assertTrue(server["addresses"]["private"][0]["addr"].startswith("10.0."))
        old = self.nova("GET", f"/servers/{server_id}", version="2.1")[2]["server"]
        self.assertEqual(old["flavor"]["id"], "2")
        [mine] = [i for i in self.call("GET", "/_canopy/instances", token=None)[2] if i["instance_id"] == server_id]
        self.assertEqual(mine, {"instance_id": server_id, "region": "RegionOne", "state": "running",
                                "instance_type": "m1.small", "availability_zone": "az-2", "user_data": "#!/bin/sh\n",
                                "spot": False, "vcpus": 1, "memory_mib": 2048})
        # Right after DELETE it is still there for a moment: its status, task_state deleting.
        self.assertEqual(self.nova("DELETE", f"/servers/{server_id}")[0], 204)
        status, _, body = self.nova("GET", f"/servers/{server_id}")
        self.assertEqual((status, body["server"]["status"], body["server"]["OS-EXT-STS:task_state"]),
                         (200, "ACTIVE", "deleting"))
        listed = {s["id"]: s for s in self.nova("GET", "/servers/detail")[2]["servers"]}
        self.assertEqual(listed[server_id]["OS-EXT-STS:task_state"], "deleting")
        self.assertIn(server_id, [s["id"] for s in self.nova("GET", "/servers")[2]["servers"]])
        [going] = [i for i in self.call("GET", "/_canopy/instances", token=None)[2] if i["instance_id"] == server_id]
        self.assertEqual(going["state"], "stopping")
        self.assertEqual(self.nova("DELETE", f"/servers/{server_id}")[0], 204)  # Nova accepts it again
        time.sleep(0.4)  # --delete-seconds defaults to 0.3
        status, _, body = self.nova("GET", f"/servers/{server_id}")
        self.assertEqual((status, body["itemNotFound"]["code"]), (404, 404))
        self.assertNotIn(server_id, [s["id"] for s in self.nova("GET", "/servers/detail")[2]["servers"]])
        self.assertEqual(self.nova("DELETE", f"/servers/{server_id}")[0], 404)
        [gone] = [i for i in self.call("GET", "/_canopy/instances", token=None)[2] if i["instance_id"] == server_id]
        self.assertEqual(gone["state"], "terminated")

    def test_unplaced_servers_are_deleted_at_once(self) -> None:
        # No host found (ERROR, NoValidHost): Nova deletes it in the API, with no window
        # (still scheduling: SlowSchedulerTest).
        self.control("faults/capacity", {"instance_type": "m1.tiny", "count": 1})
        unplaced = self.wait_status(self.create("no-host", flavor="1"), "ERROR")
        self.assertEqual(unplaced["hostId"], "")
        self.assertEqual(self.nova("DELETE", f"/servers/{unplaced['id']}")[0], 204)
        self.assertEqual(self.nova("GET", f"/servers/{unplaced['id']}")[0], 404)

    def test_create_validation(self) -> None:
        def refused(server: dict[str, Any], version: str = "2.47") -> str:
            base = {"name": "v", "imageRef": "cirros", "flavorRef": "1", "networks": "auto"}
            status, _, body = self.nova("POST", "/servers", {"server": {**base, **server}}, version=version)
            self.assertEqual(status, 400, body)
            return body["badRequest"]["message"]

        self.assertIn("Flavor m1.tiny could not be found", refused({"flavorRef": "m1.tiny"}))
        # Nova checks base64 leniently (oslo decode_as_bytes): only bad padding/length is refused.
        self.assertEqual(refused({"user_data": "not base64!"}), "Invalid input for field/attribute user_data. "
                         "Value: not base64!. 'not base64!' is not a 'base64'")
        self.assertEqual(refused({"metadata": {"canopy/cluster": "x"}}), "Invalid input for field/attribute metadata. "
                         f"Value: {{'canopy/cluster': 'x'}}. 'canopy/cluster' does not match any of the regexes: {METADATA_REGEX}")
        self.assertTrue(refused({"metadata": {"b/y": "1", "a/x": "2"}}).endswith(
            f"'a/x', 'b/y' do not match any of the regexes: {METADATA_REGEX}"))
        self.assertEqual(refused({"metadata": {"ok": 5}}),
                         "Invalid input for field/attribute ok. Value: 5. 5 is not of type 'string'")
        self.assertIn("availability zone", refused({"availability_zone": "mars"}))
        self.assertIn("networks", refused({"networks": None}))
        self.assertIn("name", refused({"name": ""}))
        self.assertIn("networks", refused({"networks": "auto"}, version="2.30"))

    def test_user_data_that_is_not_strict_base64_is_accepted(self) -> None:
        # Real Nova (2.47) answered 202 to "%%%": b64decode drops what is not base64.
        server_id = self.create("lenient", user_data="%%%")
        sloppy = self.create("sloppy", user_data="IyEv YmluL3No\nCg==")
        data = {i["instance_id"]: i["user_data"] for i in self.call("GET", "/_canopy/instances", token=None)[2]}
        self.assertEqual((data[server_id], data[sloppy]), ("", "#!/bin/sh\n"))
        self.delete(server_id, sloppy)

    def test_list_filters_and_paging(self) -> None:
        ids = [self.create(f"page-{i}") for i in range(4)]
        other = self.create("unrelated")
        seen: list[str] = []
        path = "/servers?limit=2&name=^page-"
        while path:
            status, _, body = self.nova("GET", path)
            self.assertEqual(status, 200)
            seen += [s["id"] for s in body["servers"]]
            links = body.get("servers_links", [])
            path = links[0]["href"].split("/compute/v2.1", 1)[1] if links else ""
        self.assertEqual(sorted(seen), sorted(ids))
        self.assertEqual(seen, list(reversed(ids)))  # newest first, as Nova sorts
        self.wait_status(other, "ACTIVE")
        body = self.nova("GET", "/servers/detail?status=ACTIVE&metadata=ignored")[2]
        self.assertIn(other, [s["id"] for s in body["servers"]])
        self.assertTrue(all(s["status"] == "ACTIVE" for s in body["servers"]))
        self.assertEqual(self.nova("GET", "/servers?marker=nope")[0], 400)
        self.delete(*ids, other)

    def test_flavors_zones_limits(self) -> None:
        flavors = self.nova("GET", "/flavors/detail")[2]["flavors"]
        names = {f["name"]: f for f in flavors}
        self.assertTrue({"m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"} <= set(names))
        self.assertEqual((names["m1.large"]["vcpus"], names["m1.large"]["ram"]), (4, 8192))
        zones = self.nova("GET", "/os-availability-zone")[2]["availabilityZoneInfo"]
        self.assertEqual([z["zoneName"] for z in zones], ["nova", "az-2"])
        server_id = self.create("limits", flavor="3")
        absolute = self.nova("GET", "/limits")[2]["limits"]["absolute"]
        self.assertEqual(absolute["maxTotalInstances"], 6)
        self.assertGreaterEqual(absolute["totalCoresUsed"], 2)
        self.assertNotIn("maxImageMeta", absolute)  # gone at 2.39
        self.assertEqual(self.nova("GET", "/limits", version="2.38")[2]["limits"]["absolute"]["maxImageMeta"], 128)
        self.delete(server_id)

    # ---- faults ----
    def test_fail_fault(self) -> None:
        server_id = self.create("failing")
        self.assertEqual(self.control("faults/fail", {"instance_id": server_id})[0], 200)
        server = self.nova("GET", f"/servers/{server_id}")[2]["server"]
        self.assertEqual((server["status"], server["fault"]["code"]), ("ERROR", 500))
        self.assertTrue(server["fault"]["message"] and server["fault"]["created"])
        self.assertEqual(self.control("faults/fail", {"instance_id": "nope"})[0], 404)
        self.delete(server_id)

    def test_quota_fault_and_real_quota(self) -> None:
        self.control("faults/quota", {"count": 1})
        status, _, body = self.nova("POST", "/servers", {"server": {
            "name": "q", "imageRef": "cirros", "flavorRef": "1", "networks": "auto"}})
        self.assertEqual(status, 403)
        self.assertTrue(body["forbidden"]["message"].startswith("Quota exceeded for instances:"))
        ids = [self.create(f"fill-{i}", flavor="1") for i in range(6)]  # count exhausted: allowed again
        status, _, body = self.nova("POST", "/servers", {"server": {
            "name": "q", "imageRef": "cirros", "flavorRef": "1", "networks": "auto"}})
        self.assertEqual((status, body["forbidden"]["code"]), (403, 403))
        self.delete(*ids)

    def test_capacity_and_az_outage_faults(self) -> None:
        self.assertEqual(self.control("faults/capacity", {"instance_type": "m1.large", "count": 1})[0], 200)
        full = self.wait_status(self.create("full", flavor="4"), "ERROR")
        self.assertEqual(full["fault"]["message"], NO_VALID_HOST)
        fine = self.wait_status(self.create("fine", flavor="4"), "ACTIVE")
        self.control("faults/az_outage", {"zone": "az-2"})
        down = self.wait_status(self.create("down", availability_zone="az-2"), "ERROR")
        self.assertEqual(down["fault"]["message"], NO_VALID_HOST)
        zones = self.nova("GET", "/os-availability-zone")[2]["availabilityZoneInfo"]
        self.assertEqual([z["zoneState"]["available"] for z in zones], [True, False])
        elsewhere = self.wait_status(self.create("elsewhere"), "ACTIVE")
        self.assertEqual(elsewhere["OS-EXT-AZ:availability_zone"], "nova")
        self.delete(*(server["id"] for server in (full, fine, down, elsewhere)))

    def test_pending_fault_and_throttle(self) -> None:
        self.control("faults/pending", {"seconds": 1.0})
        server_id = self.create("slow")
        time.sleep(0.5)
        server = self.nova("GET", f"/servers/{server_id}")[2]["server"]
        self.assertEqual((server["status"], server["OS-EXT-STS:task_state"], server["addresses"]),
                         ("BUILD", "spawning", {}))
        self.assertEqual(len(self.wait_status(server_id, "ACTIVE")["addresses"]["private"]), 1)
        self.control("faults/throttle", {"count": 1})
        status, headers, body = self.nova("GET", "/servers")
        self.assertEqual((status, headers["Retry-After"], body["overLimit"]["code"]), (429, "1", 429))
        self.assertEqual(self.nova("GET", "/servers")[0], 200)
        self.delete(server_id)

    def test_bad_control_input_names_the_field(self) -> None:
        for route, body, field in [("faults/fail", {}, "instance_id"), ("faults/capacity", {"instance_type": "x9"}, "instance_type"),
                                   ("faults/pending", {"seconds": "soon"}, "seconds"), ("faults/az_outage", {"zone": "mars"}, "zone"),
                                   ("faults/quota", {"count": 0}, "count")]:
            status, answer = self.control(route, body)
            self.assertEqual(status, 400, route)
            self.assertTrue(answer["error"].startswith(field), answer)
        self.assertEqual(self.call("GET", "/_canopy/health", token=None)[2], {"ok": True})


class SlowSchedulerTest(FakeCase):
    ARGS = ["--schedule-seconds", "30", "--build-seconds", "60"]

    def test_a_server_deleted_while_scheduling_is_gone_at_once(self) -> None:
        server_id = self.create("scheduling")
        server = self.nova("GET", f"/servers/{server_id}")[2]["server"]
        self.assertEqual((server["OS-EXT-STS:task_state"], server["hostId"]), ("scheduling", ""))
        self.assertEqual(self.nova("DELETE", f"/servers/{server_id}")[0], 204)
        self.assertEqual(self.nova("GET", f"/servers/{server_id}")[0], 404)


if __name__ == "__main__":
    unittest.main()
