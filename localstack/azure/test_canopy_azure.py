#!/usr/bin/env python3
"""Checks the local Azure fake's shapes, auth, api-version, long-running operations, paging,
retail prices, eviction and every fault. Starts the server as a subprocess on port 0.

    python3 localstack/azure/test_canopy_azure.py
"""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SUB = "00000000-0000-0000-0000-0000000000aa"
API = "api-version=2024-07-01"


class FakeAzure(unittest.TestCase):
    proc: subprocess.Popen
    url: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.proc = subprocess.Popen(
            [sys.executable, str(HERE / "canopy_azure.py"), "--host", "127.0.0.1", "--port", "0", "--page-size", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = cls.proc.stdout.readline()
        assert line.startswith("ready http://"), line
        cls.url = line.split()[1]
        cls.token = cls.get_token()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.proc.send_signal(signal.SIGTERM)
        assert cls.proc.wait(timeout=5) == 0

    # ----- helpers -----
    @classmethod
    def call(cls, method: str, path: str, body: Any = None, token: str | None = "default",
             form: dict[str, str] | None = None, base: str | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], Any]:
        url = path if path.startswith("http") else (base or cls.url) + path
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token == "default":
            token = getattr(cls, "token", None)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as r:
                raw = r.read()
                return r.status, dict(r.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, dict(e.headers), json.loads(raw) if raw else None

    @classmethod
    def get_token(cls, secret: str = "canopy-local-secret") -> str:
        status, _, body = cls.call("POST", "/tenant-1/oauth2/v2.0/token", token=None, form={
            "client_id": "app", "client_secret": secret, "grant_type": "client_credentials",
            "scope": "https://management.azure.com/.default"})
        assert status == 200, body
        return body["access_token"]

    def control(self, route: str, body: Any = None) -> tuple[int, Any]:
        status, _, out = self.call("POST", f"/_canopy/{route}", body if body is not None else {}, token=None)
        return status, out

    def rg(self, name: str) -> str:
        path = f"/subscriptions/{SUB}/resourceGroups/{name}"
        status, _, _ = self.call("PUT", f"{path}?api-version=2021-04-01", {"location": "eastus"})
        self.assertIn(status, (200, 201))
        return path

    def vm_body(self, size: str = "Standard_D2s_v5", spot: bool = False, zone: str | None = "1",
                user_data: str = "#!/bin/sh\necho hi\n", tags: dict[str, str] | None = None) -> dict[str, Any]:
        props: dict[str, Any] = {
            "hardwareProfile": {"vmSize": size},
            "storageProfile": {"imageReference": {"publisher": "Canonical", "offer": "o", "sku": "s", "version": "latest"}},
            "osProfile": {"computerName": "c", "adminUsername": "canopy",
                          "customData": base64.b64encode(user_data.encode()).decode()},
            "networkProfile": {"networkApiVersion": "2020-11-01", "networkInterfaceConfigurations": [{"name": "nic"}]},
        }
        if spot:
            props.update(priority="Spot", evictionPolicy="Deallocate", billingProfile={"maxPrice": -1})
        body: dict[str, Any] = {"location": "eastus", "tags": tags or {"canopy:cluster": "t"}, "properties": props}
        if zone:
            body["zones"] = [zone]
        return body

    def vm(self, rg: str, name: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return self.call("PUT", f"{rg}/providers/Microsoft.Compute/virtualMachines/{name}?{API}", self.vm_body(**kwargs))

    def power(self, rg: str, name: str) -> list[str]:
        status, _, view = self.call("GET", f"{rg}/providers/Microsoft.Compute/virtualMachines/{name}/instanceView?{API}")
        self.assertEqual(status, 200, view)
        return [s["code"] for s in view["statuses"]]

    def instance(self, name: str) -> dict[str, Any]:
        _, _, instances = self.call("GET", "/_canopy/instances", token=None)
        return next(i for i in instances if i["instance_id"] == name)

    # ----- tests -----
    def test_token_endpoint_and_discovery(self) -> None:
        status, _, body = self.call("POST", "/t/oauth2/v2.0/token", token=None, form={
            "client_id": "app", "client_secret": "wrong", "grant_type": "client_credentials",
            "scope": "https://management.azure.com/.default"})
        self.assertEqual(status, 401)
        self.assertEqual(body["error"], "invalid_client")
        self.assertTrue(body["error_description"].startswith("AADSTS7000215"))
        status, _, body = self.call("GET", "/t/v2.0/.well-known/openid-configuration", token=None)
        self.assertEqual(status, 200)
        self.assertTrue(body["token_endpoint"].endswith("/t/oauth2/v2.0/token"))

    def test_tls_on_the_same_port(self) -> None:
        context = ssl.create_default_context(cafile=str(HERE / "tls" / "ca.pem"))
        base = self.url.replace("http://127.0.0.1", "https://localhost")
        status, _, body = self.call("GET", "/_canopy/health", token=None, base=base, context=context)
        self.assertEqual((status, body), (200, {"ok": True}))

    def test_auth_and_api_version(self) -> None:
        path = f"/subscriptions/{SUB}/resourceGroups/auth?api-version=2021-04-01"
        status, headers, body = self.call("GET", path, token=None)
        self.assertEqual(status, 401)
        self.assertIn("authorization_uri=", headers["WWW-Authenticate"])
        self.assertIn("x-ms-request-id", {k.lower() for k in headers})
        status, _, body = self.call("GET", path, token="bogus")
        self.assertEqual((status, body["error"]["code"]), (401, "InvalidAuthenticationToken"))
        status, _, body = self.call("GET", f"/subscriptions/{SUB}/resourceGroups/auth")
        self.assertEqual((status, body["error"]["code"]), (400, "MissingApiVersionParameter"))
        status, _, body = self.call("GET", f"/subscriptions/{SUB}/resourceGroups/auth?api-version=1999-01-01")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidApiVersionParameter"))
        status, _, body = self.call("GET", path)
        self.assertEqual((status, body["error"]["code"]), (404, "ResourceGroupNotFound"))
        status, _, body = self.call("PUT", f"/subscriptions/{SUB}/resourceGroups/nogroup/providers/"
                                    f"Microsoft.Compute/virtualMachines/x?{API}", self.vm_body())
        self.assertEqual((status, body["error"]["code"]), (404, "ResourceGroupNotFound"))

    def test_expired_token(self) -> None:
        self.assertEqual(self.control("tokens/expire")[0], 200)
        status, _, body = self.call("GET", f"/subscriptions/{SUB}/resourceGroups/x?api-version=2021-04-01")
        self.assertEqual((status, body["error"]["code"]), (401, "ExpiredAuthenticationToken"))
        type(self).token = self.get_token()

    def test_vm_lifecycle_as_long_running_operations(self) -> None:
        rg = self.rg("lifecycle")
        self.control("faults/pending", {"seconds": 0.6})
        status, headers, vm = self.vm(rg, "vm-a")
        self.control("faults/pending", {"seconds": 0})
        self.assertEqual(status, 201, vm)
        self.assertEqual(vm["properties"]["provisioningState"], "Creating")
        self.assertNotIn("customData", vm["properties"]["osProfile"])
        operation = headers["Azure-AsyncOperation"]
        self.assertEqual(self.call("GET", operation)[2]["status"], "InProgress")
        self.assertEqual(self.instance("vm-a")["state"], "pending")
        time.sleep(0.7)
        self.assertEqual(self.call("GET", operation)[2]["status"], "Succeeded")
        self.assertEqual(self.power(rg, "vm-a"), ["ProvisioningState/succeeded", "PowerState/running"])
        status, _, got = self.call("GET", f"{rg}/providers/Microsoft.Compute/virtualMachines/vm-a?{API}&$expand=instanceView")
        self.assertEqual(got["properties"]["hardwareProfile"]["vmSize"], "Standard_D2s_v5")
        self.assertEqual(got["zones"], ["1"])
        self.assertIn("instanceView", got["properties"])
        self.assertNotIn("customData", got["properties"]["osProfile"])
        self.assertEqual(self.instance("vm-a"), {
            "instance_id": "vm-a", "region": "eastus", "state": "running", "instance_type": "Standard_D2s_v5",
            "availability_zone": "1", "user_data": "#!/bin/sh\necho hi\n", "spot": False, "vcpus": 2,
            "memory_mib": 8192})
        # The same body again is an update; a different customData is refused as in ARM.
        self.assertEqual(self.vm(rg, "vm-a")[0], 200)
        status, _, body = self.vm(rg, "vm-a", user_data="other")
        self.assertEqual((status, body["error"]["code"]), (409, "PropertyChangeNotAllowed"))
        status, headers, _ = self.call("DELETE", f"{rg}/providers/Microsoft.Compute/virtualMachines/vm-a?{API}")
        self.assertEqual(status, 202)
        self.assertIn("Location", headers)
        self.assertEqual(self.call("GET", headers["Location"])[0], 202)
        time.sleep(0.3)
        self.assertEqual(self.call("GET", headers["Location"])[0], 204)
        status, _, body = self.call("GET", f"{rg}/providers/Microsoft.Compute/virtualMachines/vm-a?{API}")
        self.assertEqual((status, body["error"]["code"]), (404, "ResourceNotFound"))
        self.assertEqual(self.instance("vm-a")["state"], "terminated")
        self.assertEqual(self.call("DELETE", f"{rg}/providers/Microsoft.Compute/virtualMachines/vm-a?{API}")[0], 204)

    def test_invalid_vm_bodies(self) -> None:
        rg = self.rg("invalid")
        body = self.vm_body()
        del body["properties"]["networkProfile"]
        status, _, out = self.call("PUT", f"{rg}/providers/Microsoft.Compute/virtualMachines/bad?{API}", body)
        self.assertEqual((status, out["error"]["code"]), (400, "InvalidParameter"))
        status, _, out = self.vm(rg, "bad", size="Standard_Nope")
        self.assertEqual((status, out["error"]["code"]), (409, "SkuNotAvailable"))

    def test_paging(self) -> None:
        rg = self.rg("paging")
        for i in range(5):
            self.assertEqual(self.vm(rg, f"p{i}")[0], 201)
        names: list[str] = []
        url = f"{rg}/providers/Microsoft.Compute/virtualMachines?{API}"
        pages = 0
        while url:
            status, _, page = self.call("GET", url)
            self.assertEqual(status, 200, page)
            names += [v["name"] for v in page["value"]]
            url = page.get("nextLink")
            pages += 1
        self.assertEqual((sorted(names), pages), ([f"p{i}" for i in range(5)], 3))

    def test_retail_prices_and_skus(self) -> None:
        f = "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus' and armSkuName eq 'Standard_D2s_v5'"
        status, _, body = self.call("GET", "/api/retail/prices?" + urllib.parse.urlencode({"$filter": f}), token=None)
        self.assertEqual(status, 200)
        prices = {i["skuName"]: i["retailPrice"] for i in body["Items"]}
        self.assertEqual(prices, {"D2s v5": 0.096, "D2s v5 Spot": 0.020266})
        self.assertEqual((body["Count"], body["NextPageLink"]), (2, None))
        f = "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus' and priceType eq 'Consumption'"
        status, _, body = self.call("GET", "/api/retail/prices?" + urllib.parse.urlencode({"$filter": f}), token=None)
        self.assertEqual(body["Count"], 1000)
        self.assertTrue(body["NextPageLink"])
        status, _, body = self.call("GET", "/api/retail/prices?$filter=" + urllib.parse.quote("bogus gt 1"), token=None)
        self.assertEqual(status, 400)
        url = f"/subscriptions/{SUB}/providers/Microsoft.Compute/skus?api-version=2021-07-01&$filter=" + \
            urllib.parse.quote("location eq 'eastus'")
        status, _, body = self.call("GET", url)
        sku = next(s for s in body["value"] if s["name"] == "Standard_D2s_v5")
        caps = {c["name"]: c["value"] for c in sku["capabilities"]}
        self.assertEqual((caps["vCPUs"], caps["MemoryGB"]), ("2", "8"))
        self.assertEqual(sku["locationInfo"][0]["zones"], ["1", "2", "3"])

    def test_spot_eviction(self) -> None:
        rg = self.rg("spot")
        self.assertEqual(self.vm(rg, "s1", spot=True)[0], 201)
        self.assertEqual(self.instance("s1")["spot"], True)
        status, _, body = self.call("POST", f"{rg}/providers/Microsoft.Compute/virtualMachines/s1/simulateEviction?{API}")
        self.assertEqual(status, 204, body)
        self.assertIn("PowerState/deallocated", self.power(rg, "s1"))
        self.assertEqual(self.instance("s1")["state"], "stopped")
        self.assertEqual(self.vm(rg, "s2", spot=True)[0], 201)
        self.assertEqual(self.control("faults/interrupt", {"instance_id": "s2"})[0], 200)
        self.assertIn("PowerState/deallocated", self.power(rg, "s2"))
        self.assertEqual(self.vm(rg, "regular")[0], 201)
        status, _, body = self.call("POST", f"{rg}/providers/Microsoft.Compute/virtualMachines/regular/simulateEviction?{API}")
        self.assertEqual((status, body["error"]["code"]), (409, "OperationNotAllowed"))

    def test_fail_fault(self) -> None:
        rg = self.rg("fail")
        self.vm(rg, "f1")
        self.assertEqual(self.control("faults/fail", {"instance_id": "f1"})[0], 200)
        codes = self.power(rg, "f1")
        self.assertEqual(codes, ["ProvisioningState/failed/InternalOperationError", "PowerState/stopped"])
        self.assertEqual(self.instance("f1")["state"], "stopped")

    def test_quota_fault(self) -> None:
        rg = self.rg("quota")
        self.assertEqual(self.control("faults/quota", {"count": 1})[0], 200)
        status, _, body = self.vm(rg, "q1")
        self.assertEqual((status, body["error"]["code"]), (409, "OperationNotAllowed"))
        self.assertIn("quota", body["error"]["message"])
        self.assertEqual(self.vm(rg, "q1")[0], 201)
        status, _, body = self.call("GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/eastus/usages?{API}")
        cores = next(u for u in body["value"] if u["name"]["value"] == "cores")
        self.assertGreaterEqual(cores["currentValue"], 2)

    def test_capacity_fault(self) -> None:
        rg = self.rg("capacity")
        self.control("faults/capacity", {"instance_type": "Standard_B1s", "count": 1})
        status, headers, _ = self.vm(rg, "c1", size="Standard_B1s", zone=None)
        self.assertEqual(status, 201)
        op = self.call("GET", headers["Azure-AsyncOperation"])[2]
        self.assertEqual((op["status"], op["error"]["code"]), ("Failed", "AllocationFailed"))
        status, headers, _ = self.vm(rg, "c2", size="Standard_B1s", zone=None)
        self.assertEqual(self.call("GET", headers["Azure-AsyncOperation"])[2]["status"], "Succeeded")

    def test_throttle_and_clear(self) -> None:
        self.control("faults/throttle", {"count": 1, "retry_after": 3})
        status, headers, body = self.call("GET", f"/subscriptions/{SUB}/resourceGroups/x?api-version=2021-04-01")
        self.assertEqual((status, headers["Retry-After"], body["error"]["code"]), (429, "3", "TooManyRequests"))
        self.control("faults/quota")
        self.assertEqual(self.control("faults/clear")[0], 200)
        self.assertEqual(self.vm(self.rg("cleared"), "ok")[0], 201)

    def test_bad_control_input_names_the_field(self) -> None:
        for route, body, field in [("faults/interrupt", {}, "instance_id"), ("faults/fail", {"instance_id": "nope"}, "instance_id"),
                                   ("faults/capacity", {}, "instance_type"), ("faults/pending", {"seconds": "x"}, "seconds"),
                                   ("faults/quota", {"count": 0}, "count")]:
            status, out = self.control(route, body)
            self.assertEqual(status, 400, route)
            self.assertTrue(out["error"].startswith(field), out)


if __name__ == "__main__":
    unittest.main()
