#!/usr/bin/env python3
"""End-to-end test of canopy_moto.py: starts it as a subprocess on port 0 and talks to it
with boto3 (the EC2 API) and urllib (the /_canopy/ control API).

    "$(./install.sh)" test_canopy_moto.py -v
"""

from __future__ import annotations

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

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "canopy_moto.py")
AMI = "ami-12345678"


def start_server() -> tuple[subprocess.Popen[str], str]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=None,  # inherit: server logs show up in the test output
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until "ready ..." (or EOF if it died)
    if not line.startswith("ready http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"server did not become ready: {line!r}")
    sys.stderr.write(f"[test] server ready in {time.monotonic() - t0:.2f}s\n")
    return proc, line.split()[1]


def stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class CanopyMotoTest(unittest.TestCase):
    proc: subprocess.Popen[str]
    url: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.proc, cls.url = start_server()

    @classmethod
    def tearDownClass(cls) -> None:
        stop_server(cls.proc)
        assert cls.proc.stdout is not None
        cls.proc.stdout.close()

    def setUp(self) -> None:
        self.control("POST", "/_canopy/reset")

    # ---- helpers -----------------------------------------------------------------
    def control(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        self.assertEqual(status, expect, payload)
        return json.loads(payload)

    def ec2(self, region: str = "us-east-1") -> Any:
        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # No SDK retries: a 500 (capacity) would otherwise be retried and each
            # attempt would use up one `count` of the fault.
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def run_one(self, ec2: Any, **kw: Any) -> dict[str, Any]:
        kw.setdefault("ImageId", AMI)
        kw.setdefault("InstanceType", "t3.micro")
        r = ec2.run_instances(MinCount=1, MaxCount=1, **kw)
        return r["Instances"][0]

    def describe(self, ec2: Any, iid: str) -> dict[str, Any]:
        r = ec2.describe_instances(InstanceIds=[iid])
        return r["Reservations"][0]["Instances"][0]

    def canopy_instances(self) -> dict[str, dict[str, Any]]:
        return {i["instance_id"]: i for i in self.control("GET", "/_canopy/instances")}

    # ---- tests -------------------------------------------------------------------
    def test_health(self) -> None:
        self.assertEqual(self.control("GET", "/_canopy/health"), {"ok": True})
        self.control("GET", "/_canopy/nope", expect=404)

    def test_instances_view(self) -> None:
        ec2 = self.ec2()
        a = self.run_one(
            ec2,
            InstanceType="m5.large",
            UserData="#!/bin/sh\necho héllo canopy\n",  # boto3 base64-encodes it
            Placement={"AvailabilityZone": "us-east-1b"},
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "canopy:node", "Value": "n1"},
                        {"Key": "Name", "Value": "web"},
                    ],
                }
            ],
        )
        b = self.run_one(
            ec2,
            InstanceType="c5.xlarge",
            InstanceMarketOptions={
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time"},
            },
        )
        c = self.run_one(self.ec2("eu-west-1"), Placement={"AvailabilityZone": "eu-west-1c"})
        self.assertEqual(self.describe(ec2, b["InstanceId"]).get("InstanceLifecycle"), "spot")

        got = self.canopy_instances()
        self.assertEqual(set(got), {a["InstanceId"], b["InstanceId"], c["InstanceId"]})
        ia, ib, ic = got[a["InstanceId"]], got[b["InstanceId"]], got[c["InstanceId"]]
        self.assertEqual(ia["region"], "us-east-1")
        self.assertEqual(ia["state"], "running")
        self.assertEqual(ia["instance_type"], "m5.large")
        self.assertEqual(ia["availability_zone"], "us-east-1b")
        self.assertEqual(ia["user_data"], "#!/bin/sh\necho héllo canopy\n")
        self.assertEqual(ia["tags"], {"canopy:node": "n1", "Name": "web"})
        self.assertFalse(ia["spot"])
        self.assertIsNone(ia["state_reason"])
        self.assertRegex(ia["private_ip"], r"^\d+\.\d+\.\d+\.\d+$")
        self.assertTrue(ib["spot"])
        self.assertEqual(ib["user_data"], "")
        self.assertEqual(ib["tags"], {})
        self.assertEqual((ic["region"], ic["availability_zone"]), ("eu-west-1", "eu-west-1c"))

    def test_spot_request_is_spot(self) -> None:
        ec2 = self.ec2()
        r = ec2.request_spot_instances(
            InstanceCount=1,
            LaunchSpecification={"ImageId": AMI, "InstanceType": "m5.large"},
        )
        req = ec2.describe_spot_instance_requests(
            SpotInstanceRequestIds=[r["SpotInstanceRequests"][0]["SpotInstanceRequestId"]]
        )["SpotInstanceRequests"][0]
        iid = req["InstanceId"]
        self.assertTrue(self.canopy_instances()[iid]["spot"])
        self.control("POST", "/_canopy/faults/interrupt", {"instance_id": iid})
        req = ec2.describe_spot_instance_requests(
            SpotInstanceRequestIds=[req["SpotInstanceRequestId"]]
        )["SpotInstanceRequests"][0]
        self.assertEqual(req["State"], "closed")

    def test_interrupt(self) -> None:
        ec2 = self.ec2()
        iid = self.run_one(ec2, InstanceMarketOptions={"MarketType": "spot"})["InstanceId"]
        other = self.run_one(ec2)["InstanceId"]
        self.control("POST", "/_canopy/faults/interrupt", {"instance_id": iid})
        d = self.describe(ec2, iid)
        self.assertEqual(d["State"], {"Code": 48, "Name": "terminated"})
        self.assertEqual(
            d["StateReason"],
            {
                "Code": "Server.SpotInstanceTermination",
                "Message": "Server.SpotInstanceTermination: Spot instance termination",
            },
        )
        self.assertEqual(self.describe(ec2, other)["State"]["Name"], "running")
        got = self.canopy_instances()[iid]
        self.assertEqual(got["state"], "terminated")
        self.assertEqual(got["state_reason"], "Server.SpotInstanceTermination")
        # filters see it too
        r = ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}]
        )
        self.assertEqual([i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]], [iid])
        # again -> 409, unknown -> 404, bad body -> 400
        self.control("POST", "/_canopy/faults/interrupt", {"instance_id": iid}, expect=409)
        self.control("POST", "/_canopy/faults/interrupt", {"instance_id": "i-0000"}, expect=404)
        self.control("POST", "/_canopy/faults/interrupt", {}, expect=400)

    def test_fail(self) -> None:
        ec2 = self.ec2("us-west-2")
        iid = self.run_one(ec2)["InstanceId"]
        self.control("POST", "/_canopy/faults/fail", {"instance_id": iid})
        d = self.describe(ec2, iid)
        self.assertEqual(d["State"]["Name"], "terminated")
        self.assertEqual(d["StateReason"]["Code"], "Server.InternalError")
        self.assertEqual(self.canopy_instances()[iid]["state_reason"], "Server.InternalError")

    def test_pending(self) -> None:
        ec2 = self.ec2()
        before = self.run_one(ec2)["InstanceId"]
        self.control("POST", "/_canopy/faults/pending", {"seconds": 2})
        t0 = time.monotonic()
        slow = self.run_one(ec2)
        self.assertEqual(slow["State"], {"Code": 0, "Name": "pending"})
        iid = slow["InstanceId"]
        self.assertEqual(self.describe(ec2, iid)["State"], {"Code": 0, "Name": "pending"})
        self.assertEqual(self.describe(ec2, before)["State"]["Name"], "running")
        self.assertEqual(self.canopy_instances()[iid]["state"], "pending")
        r = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending"]}])
        self.assertEqual([i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]], [iid])
        while self.describe(ec2, iid)["State"]["Name"] == "pending":
            self.assertLess(time.monotonic() - t0, 5, "still pending after 5 s")
            time.sleep(0.2)
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        self.assertEqual(self.describe(ec2, iid)["State"], {"Code": 16, "Name": "running"})
        self.assertEqual(self.canopy_instances()[iid]["state"], "running")
        # 0 turns it off
        self.control("POST", "/_canopy/faults/pending", {"seconds": 0})
        fast = self.run_one(ec2)["InstanceId"]
        self.assertEqual(self.describe(ec2, fast)["State"]["Name"], "running")
        self.control("POST", "/_canopy/faults/pending", {"seconds": -1}, expect=400)

    def test_capacity(self) -> None:
        ec2 = self.ec2()
        self.control("POST", "/_canopy/faults/capacity", {"instance_type": "p3.2xlarge", "count": 2})
        for _ in range(2):
            with self.assertRaises(ClientError) as cm:
                self.run_one(ec2, InstanceType="p3.2xlarge")
            err = cm.exception.response
            self.assertEqual(err["Error"]["Code"], "InsufficientInstanceCapacity")
            self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], 500)
        # other types are unaffected, and the third matching call succeeds
        self.run_one(ec2, InstanceType="t3.micro")
        self.run_one(ec2, InstanceType="p3.2xlarge")
        self.assertEqual(self.control("GET", "/_canopy/faults")["capacity"], [])

        # zone-scoped and unlimited: only that zone fails, every time
        self.control(
            "POST",
            "/_canopy/faults/capacity",
            {"instance_type": "m5.large", "availability_zone": "us-east-1b"},
        )
        for _ in range(3):
            with self.assertRaises(ClientError) as cm:
                self.run_one(ec2, InstanceType="m5.large", Placement={"AvailabilityZone": "us-east-1b"})
            self.assertEqual(cm.exception.response["Error"]["Code"], "InsufficientInstanceCapacity")
            self.assertIn("(us-east-1b)", cm.exception.response["Error"]["Message"])
        self.run_one(ec2, InstanceType="m5.large", Placement={"AvailabilityZone": "us-east-1c"})
        # a subnet in the zone counts as asking for the zone
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1b")
        with self.assertRaises(ClientError):
            self.run_one(ec2, InstanceType="m5.large", SubnetId=subnet["Subnet"]["SubnetId"])
        # same zone name in another region's request never matches
        self.run_one(self.ec2("us-west-2"), InstanceType="m5.large")
        # no instances were created by the failed calls
        types = sorted(i["instance_type"] for i in self.canopy_instances().values())
        self.assertEqual(types, ["m5.large", "m5.large", "p3.2xlarge", "t3.micro"])

        # clear removes it
        self.control("POST", "/_canopy/faults/clear")
        self.run_one(ec2, InstanceType="m5.large", Placement={"AvailabilityZone": "us-east-1b"})
        self.control("POST", "/_canopy/faults/capacity", {}, expect=400)
        self.control("POST", "/_canopy/faults/capacity", {"instance_type": "x", "count": 0}, expect=400)

    def test_quota(self) -> None:
        ec2 = self.ec2()
        self.control("POST", "/_canopy/faults/quota", {"count": 1})
        with self.assertRaises(ClientError) as cm:
            self.run_one(ec2, InstanceType="t3.micro")
        self.assertEqual(cm.exception.response["Error"]["Code"], "VcpuLimitExceeded")
        self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.run_one(ec2, InstanceType="t3.micro")  # the one refusal is used up
        self.control("POST", "/_canopy/faults/quota")
        for _ in range(2):
            with self.assertRaises(ClientError):
                self.run_one(ec2, InstanceType="m5.large")
        self.assertEqual(self.control("GET", "/_canopy/faults")["quota_remaining"], -1)
        self.control("POST", "/_canopy/faults/clear")
        self.run_one(ec2, InstanceType="m5.large")
        self.control("POST", "/_canopy/faults/quota", {"count": 0}, expect=400)

    def test_clear_and_reset(self) -> None:
        ec2 = self.ec2()
        self.control("POST", "/_canopy/faults/pending", {"seconds": 60})
        self.control("POST", "/_canopy/faults/capacity", {"instance_type": "t3.small"})
        iid = self.run_one(ec2)["InstanceId"]
        self.assertEqual(self.describe(ec2, iid)["State"]["Name"], "pending")
        self.control("POST", "/_canopy/faults/clear")
        # clear: held instances come up, new ones are running at once, no capacity errors
        self.assertEqual(self.describe(ec2, iid)["State"]["Name"], "running")
        self.assertEqual(self.describe(ec2, self.run_one(ec2, InstanceType="t3.small")["InstanceId"])["State"]["Name"], "running")
        self.assertEqual(
            self.control("GET", "/_canopy/faults"),
            {"pending_seconds": 0.0, "quota_remaining": None, "capacity": [], "instances_pending": []},
        )

        self.control("POST", "/_canopy/faults/capacity", {"instance_type": "t3.small"})
        self.control("POST", "/_canopy/faults/pending", {"seconds": 60})
        self.control("POST", "/_canopy/reset")
        self.assertEqual(self.control("GET", "/_canopy/instances"), [])
        self.assertEqual(ec2.describe_instances()["Reservations"], [])
        with self.assertRaises(ClientError) as cm:
            self.describe(ec2, iid)
        self.assertEqual(cm.exception.response["Error"]["Code"], "InvalidInstanceID.NotFound")
        fresh = self.run_one(ec2, InstanceType="t3.small")["InstanceId"]
        self.assertEqual(self.describe(ec2, fresh)["State"]["Name"], "running")

    def test_moto_api_still_served(self) -> None:
        with urllib.request.urlopen(self.url + "/moto-api/", timeout=10) as resp:
            self.assertEqual(resp.status, 200)


class SignalTest(unittest.TestCase):
    def test_sigterm_stops_server(self) -> None:
        proc, url = start_server()
        with urllib.request.urlopen(url + "/_canopy/health", timeout=10) as resp:
            self.assertEqual(resp.status, 200)
        t0 = time.monotonic()
        self.assertEqual(stop_server(proc), 0)
        self.assertLess(time.monotonic() - t0, 5)
        assert proc.stdout is not None
        self.assertEqual(proc.stdout.read(), "")  # nothing after the ready line
        proc.stdout.close()
        with self.assertRaises(OSError):
            urllib.request.urlopen(url + "/_canopy/health", timeout=2)


if __name__ == "__main__":
    unittest.main()
