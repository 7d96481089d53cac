#!/usr/bin/env python3
"""Tests for canopy_redfish.py: starts the server on port 0 and checks the Redfish shapes
Canopy's bare-metal provider relies on, Basic auth, power actions, virtual media with a
data: URI, the boot override and the /_canopy/ control routes.

    "$(localstack/redfish/install.sh)" localstack/redfish/test_canopy_redfish.py
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
USER, PASSWORD = "canopy", "s3cret"


class Server:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "canopy_redfish.py"), "--port", "0", "--username", USER,
             "--password", PASSWORD, "--power-delay", "0.2", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split(" ", 1)[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def request(self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = (USER, PASSWORD)) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        text = raw.decode() if raw else ""
        try:
            return status, json.loads(text) if text.strip() else None
        except ValueError:
            return status, text


class CanopyRedfishTest(unittest.TestCase):
    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server("--systems", "3")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def instances(self) -> list[dict[str, Any]]:
        status, body = self.server.request("GET", "/_canopy/instances", auth=None)
        self.assertEqual(status, 200)
        return body

    def system_id(self, name: str) -> str:
        return next(i["instance_id"] for i in self.instances() if i["name"] == name)

    def system(self, system_id: str) -> dict[str, Any]:
        status, body = self.server.request("GET", f"/redfish/v1/Systems/{system_id}")
        self.assertEqual(status, 200, body)
        return body

    def wait_power(self, system_id: str, want: str, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.system(system_id)["PowerState"] == want:
                return
            time.sleep(0.05)
        self.fail(f"{system_id} never reached {want}")

    def test_service_root_needs_no_auth_but_systems_do(self) -> None:
        status, root = self.server.request("GET", "/redfish/v1/", auth=None)
        self.assertEqual(status, 200)
        self.assertEqual(root["Systems"]["@odata.id"], "/redfish/v1/Systems")
        self.assertEqual(self.server.request("GET", "/redfish/v1/Systems", auth=None)[0], 401)
        self.assertEqual(self.server.request("GET", "/redfish/v1/Systems", auth=(USER, "wrong"))[0], 401)
        status, systems = self.server.request("GET", "/redfish/v1/Systems")
        self.assertEqual(status, 200)
        self.assertEqual(systems["Members@odata.count"], 3)

    def test_system_shape(self) -> None:
        sid = self.system_id("node-2")
        system = self.system(sid)
        self.assertEqual(system["Id"], sid)
        self.assertEqual(system["Name"], "node-2")
        self.assertEqual(system["ProcessorSummary"]["Count"], 4)
        self.assertEqual(system["MemorySummary"]["TotalSystemMemoryGiB"], 8)
        self.assertEqual(system["Status"]["Health"], "OK")
        self.assertIn("On", system["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"])
        self.assertEqual(system["VirtualMedia"]["@odata.id"], f"/redfish/v1/Systems/{sid}/VirtualMedia")
        self.assertEqual(self.server.request("GET", "/redfish/v1/Systems/no-such-system")[0], 404)

    def test_power_on_and_off_are_short_and_report_transitions(self) -> None:
        sid = self.system_id("node-0")
        reset = f"/redfish/v1/Systems/{sid}/Actions/ComputerSystem.Reset"
        self.assertEqual(self.server.request("POST", reset, {"ResetType": "On"})[0], 204)
        self.assertEqual(self.system(sid)["PowerState"], "PoweringOn")
        self.assertEqual(next(i for i in self.instances() if i["instance_id"] == sid)["state"], "pending")
        self.wait_power(sid, "On", 2.0)
        self.assertEqual(next(i for i in self.instances() if i["instance_id"] == sid)["state"], "running")
        self.assertEqual(self.server.request("POST", reset, {"ResetType": "GracefulShutdown"})[0], 204)
        self.assertEqual(self.system(sid)["PowerState"], "PoweringOff")
        self.wait_power(sid, "Off", 2.0)
        self.assertEqual(next(i for i in self.instances() if i["instance_id"] == sid)["state"], "stopped")
        # Asking for the current state cancels a pending transition.
        self.assertEqual(self.server.request("POST", reset, {"ResetType": "On"})[0], 204)
        self.assertEqual(self.server.request("POST", reset, {"ResetType": "ForceOff"})[0], 204)
        time.sleep(0.4)
        self.assertEqual(self.system(sid)["PowerState"], "Off")

    def test_bootstrap_through_virtual_media_and_boot_override(self) -> None:
        sid = self.system_id("node-1")
        script = "#!/bin/sh\necho hello from canopy\n"
        uri = "data:text/x-shellscript;base64," + base64.b64encode(script.encode()).decode()
        status, collection = self.server.request("GET", f"/redfish/v1/Systems/{sid}/VirtualMedia")
        self.assertEqual(status, 200)
        members = [m["@odata.id"] for m in collection["Members"]]
        cd = next(m for m in members if m.endswith("/Cd"))
        status, media = self.server.request("GET", cd)
        self.assertIn("CD", media["MediaTypes"])
        insert = media["Actions"]["#VirtualMedia.InsertMedia"]["target"]
        status, body = self.server.request("POST", insert, {"Image": uri, "Inserted": True, "WriteProtected": True})
        self.assertEqual(status, 204, body)
        status, media = self.server.request("GET", cd)
        self.assertEqual((media["Image"], media["Inserted"]), (uri, True))
        boot = {"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Continuous"}}
        self.assertEqual(self.server.request("PATCH", f"/redfish/v1/Systems/{sid}", boot)[0], 204)
        self.assertEqual(self.system(sid)["Boot"]["BootSourceOverrideTarget"], "Cd")
        self.assertEqual(next(i for i in self.instances() if i["instance_id"] == sid)["user_data"], script)
        # A malformed data: URI is refused, not stored.
        self.assertEqual(self.server.request("POST", insert, {"Image": "data:;base64,!!!"})[0], 400)
        eject = media["Actions"]["#VirtualMedia.EjectMedia"]["target"]
        self.assertEqual(self.server.request("POST", eject, {})[0], 204)
        self.assertEqual(next(i for i in self.instances() if i["instance_id"] == sid)["user_data"], "")
        clear = {"Boot": {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}}
        self.assertEqual(self.server.request("PATCH", f"/redfish/v1/Systems/{sid}", clear)[0], 204)
        self.assertEqual(self.system(sid)["Boot"]["BootSourceOverrideTarget"], "None")


class FaultsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Server("--systems", "2")

    def tearDown(self) -> None:
        self.server.stop()

    def test_control_routes(self) -> None:
        s = self.server
        self.assertEqual(s.request("GET", "/_canopy/health", auth=None), (200, {"ok": True}))
        status, instances = s.request("GET", "/_canopy/instances", auth=None)
        self.assertEqual(status, 200)
        self.assertEqual(len(instances), 2)
        self.assertEqual(
            set(instances[0]),
            {"instance_id", "name", "region", "state", "instance_type", "availability_zone", "user_data",
             "spot", "vcpus", "memory_mib"},
        )
        self.assertEqual((instances[0]["vcpus"], instances[0]["memory_mib"], instances[0]["spot"]), (4, 8192, False))
        self.assertEqual(s.request("POST", "/_canopy/faults/fail", {}, auth=None)[0], 400)
        self.assertEqual(s.request("POST", "/_canopy/faults/fail", {"instance_id": "nope"}, auth=None)[0], 404)
        self.assertEqual(s.request("POST", "/_canopy/faults/pending", {"seconds": -1}, auth=None)[0], 400)
        self.assertEqual(s.request("GET", "/_canopy/nope", auth=None)[0], 404)

    def test_fail_powers_off_and_turns_critical(self) -> None:
        s = self.server
        sid = s.request("GET", "/_canopy/instances", auth=None)[1][0]["instance_id"]
        s.request("POST", f"/redfish/v1/Systems/{sid}/Actions/ComputerSystem.Reset", {"ResetType": "On"})
        time.sleep(0.4)
        self.assertEqual(s.request("GET", f"/redfish/v1/Systems/{sid}")[1]["PowerState"], "On")
        self.assertEqual(s.request("POST", "/_canopy/faults/fail", {"instance_id": sid}, auth=None)[0], 200)
        system = s.request("GET", f"/redfish/v1/Systems/{sid}")[1]
        self.assertEqual((system["PowerState"], system["Status"]["Health"]), ("Off", "Critical"))
        # Clearing faults leaves the machine's fate alone; repair restores health.
        s.request("POST", "/_canopy/faults/clear", {}, auth=None)
        self.assertEqual(s.request("GET", f"/redfish/v1/Systems/{sid}")[1]["Status"]["Health"], "Critical")
        s.request("POST", "/_canopy/faults/repair", {"instance_id": sid}, auth=None)
        self.assertEqual(s.request("GET", f"/redfish/v1/Systems/{sid}")[1]["Status"]["Health"], "OK")

    def test_slow_boot(self) -> None:
        s = self.server
        sid = s.request("GET", "/_canopy/instances", auth=None)[1][1]["instance_id"]
        self.assertEqual(s.request("POST", "/_canopy/faults/pending", {"seconds": 1.0}, auth=None)[0], 200)
        s.request("POST", f"/redfish/v1/Systems/{sid}/Actions/ComputerSystem.Reset", {"ResetType": "On"})
        s.request("POST", "/_canopy/faults/clear", {}, auth=None)
        time.sleep(0.5)
        self.assertEqual(s.request("GET", f"/redfish/v1/Systems/{sid}")[1]["PowerState"], "PoweringOn")
        time.sleep(0.7)
        self.assertEqual(s.request("GET", f"/redfish/v1/Systems/{sid}")[1]["PowerState"], "On")

    def test_systems_file(self) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([{"name": "big-0", "cpus": 64, "memory_mib": 262144}], f)
        try:
            server = Server("--systems-file", f.name)
            try:
                status, instances = server.request("GET", "/_canopy/instances", auth=None)
                self.assertEqual([(i["name"], i["vcpus"], i["memory_mib"]) for i in instances], [("big-0", 64, 262144)])
                system = server.request("GET", f"/redfish/v1/Systems/{instances[0]['instance_id']}")[1]
                self.assertEqual(system["MemorySummary"]["TotalSystemMemoryGiB"], 256)
            finally:
                server.stop()
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main()
