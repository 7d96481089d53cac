#!/usr/bin/env python3
"""Canopy's local bare metal: sushy-tools' Redfish emulator (pinned, see requirements.txt)
with its fake systems driver, in-process, plus a small JSON control API under /_canopy/.

    python canopy_redfish.py --host 127.0.0.1 --port 0 --systems 4
    python canopy_redfish.py --port 0 --systems-file systems.json

Everything except /_canopy/* is handed to sushy-tools' own Flask app unchanged, behind
its own HTTP Basic auth middleware (an htpasswd with bcrypt hashes generated in a private
temporary directory; `--username`/`--password`, default admin/password). The Redfish service
root /redfish/v1/ answers without auth, as the standard and sushy-tools want.

Systems are the fake driver's: `--systems N` makes node-0 .. node-N-1 (4 cpus, 8192 MiB,
deterministic UUIDs derived from the name); a JSON file gives a list of
{"name", "uuid" (optional), "cpus", "memory_mib"}. Every system starts powered Off. The
Redfish system id (in /redfish/v1/Systems/<id>) is the UUID.

What sushy-tools does not do by itself, and this wrapper adds:
  * power transitions land after a fixed, short delay (`--power-delay`, default 0.2 s)
    instead of the fake driver's hard-coded random 1-11 s, and PowerState reports
    PoweringOn / PoweringOff meanwhile (the fake driver would report the old state);
  * ProcessorSummary.Count and MemorySummary.TotalSystemMemoryGiB (the fake driver
    reports neither);
  * virtual media accepts `data:` URIs (RFC 2397) as well as http(s) URLs: the image is
    "downloaded" by decoding it. This is how Canopy hands a host its bootstrap script;
  * Status.Health turns Critical for a system failed through the control API.

Control API (no auth), JSON in and out:
  GET  /_canopy/health
  GET  /_canopy/instances         one object per system: instance_id (the system id),
                                  name, state (pending|running|stopping|stopped), user_data
                                  (the inserted virtual media, decoded), vcpus, memory_mib...
  POST /_canopy/faults/fail       {"instance_id"}: power off at once, Health Critical
  POST /_canopy/faults/repair     {"instance_id"}: Health OK again (power unchanged)
  POST /_canopy/faults/pending    {"seconds"}: power-on delay from now on (0: --power-delay)
  POST /_canopy/faults/clear      removes the delay fault; failed systems stay failed

Prints exactly one line, `ready http://HOST:PORT`, on stdout once the socket is listening
and the app is warm; everything else goes to stderr.

This file touches sushy-tools internals. Every such place is marked `SUSHY-INTERNAL`; they
were written against sushy-tools 2.2.0 (the pin in requirements.txt). Re-check them when
bumping it.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import binascii
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from typing import Any

log = logging.getLogger("canopy_redfish")

TESTED_SUSHY_TOOLS_VERSION = "2.2.0"

# Namespace for the deterministic system UUIDs made from names (`--systems N`).
SYSTEM_NAMESPACE = uuid.UUID("6f0e3c1a-6a43-4f7e-9d55-0c8a3b1f2b10")


# --------------------------------------------------------------------------------------
# Fault state (shared by the control API and the sushy-tools patches)
# --------------------------------------------------------------------------------------
class Faults:
    def __init__(self, power_delay: float) -> None:
        # Serialises every read-modify-write of a system (the fake driver has none).
        self.lock = threading.RLock()
        # Seconds every power transition takes (the default the wrapper was started with).
        self.power_delay = power_delay
        # Seconds a power-on takes while the slow-boot fault is set; 0 = power_delay.
        self.boot_seconds = 0.0
        # System UUIDs whose health is Critical.
        self.failed: set[str] = set()

    def on_delay(self) -> float:
        with self.lock:
            return self.boot_seconds if self.boot_seconds > 0 else self.power_delay

    def clear(self) -> None:
        with self.lock:
            self.boot_seconds = 0.0

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "power_delay": self.power_delay,
                "boot_seconds": self.boot_seconds,
                "failed": sorted(self.failed),
            }


FAULTS = Faults(power_delay=0.2)


# --------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------
def make_systems(count: int) -> list[dict[str, Any]]:
    return [
        {"name": f"node-{i}", "uuid": str(uuid.uuid5(SYSTEM_NAMESPACE, f"node-{i}")), "cpus": 4, "memory_mib": 8192}
        for i in range(count)
    ]


def load_systems(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, list) or not raw:
        raise SystemExit(f"{path}: expected a non-empty JSON list of systems")
    systems = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise SystemExit(f"{path}: system {i} needs a \"name\" (string)")
        name = entry["name"]
        cpus = entry.get("cpus", 4)
        memory = entry.get("memory_mib", entry.get("memory", 8192))
        for field, value in (("cpus", cpus), ("memory_mib", memory)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SystemExit(f"{path}: system {name}: {field} must be an integer >= 1")
        system_uuid = entry.get("uuid") or str(uuid.uuid5(SYSTEM_NAMESPACE, name))
        systems.append({"name": name, "uuid": str(system_uuid), "cpus": cpus, "memory_mib": memory})
    return systems


def fake_systems_config(systems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fake driver's SUSHY_EMULATOR_FAKE_SYSTEMS entries (extra keys ride along in the
    stored dict, which is where the cpu/memory patches read them)."""
    out = []
    for i, s in enumerate(systems):
        out.append(
            {
                "uuid": s["uuid"],
                "name": s["name"],
                "power_state": "Off",
                "external_notifier": False,
                "nics": [{"mac": "52:54:00:%02x:%02x:%02x" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)}],
                "cpus": s["cpus"],
                "memory_mib": s["memory_mib"],
            }
        )
    return out


# --------------------------------------------------------------------------------------
# Patches into sushy-tools
# --------------------------------------------------------------------------------------
def install_patches() -> None:
    import flask
    import sushy_tools
    from sushy_tools import error
    from sushy_tools.emulator import main as emulator
    from sushy_tools.emulator.resources import vmedia
    from sushy_tools.emulator.resources.systems.fakedriver import FakeDriver

    version = getattr(sushy_tools, "__version__", None)
    try:
        import importlib.metadata

        version = importlib.metadata.version("sushy-tools")
    except Exception:  # noqa: BLE001
        pass
    if version != TESTED_SUSHY_TOOLS_VERSION:
        log.warning(
            "sushy-tools %s installed, canopy_redfish was written against %s: internals may differ",
            version,
            TESTED_SUSHY_TOOLS_VERSION,
        )

    # --- deterministic power transitions ------------------------------------------
    # SUSHY-INTERNAL: FakeDriver.set_power_state stores
    # pending_power={"power_state", "apply_time"} with apply_time = now + randint(1, 11);
    # FakeDriver._get applies it (via _update_if_needed) on the first read after
    # apply_time. We keep that mechanism and only choose the delay. Two changes of
    # behaviour on purpose, both what a real BMC does: asking for the state a system is
    # already in cancels a transition still pending (the fake driver would let a pending
    # power-off land after a later power-on), and repeating the pending request does not
    # restart its timer.
    def set_power_state(self: Any, identity: str, state: str) -> None:
        with FAULTS.lock:
            system = self._get(identity)
            if "On" in state:
                target = "On"
            elif state in ("ForceOff", "GracefulShutdown"):
                target = "Off"
            elif "Restart" in state:
                # As the fake driver does: off at once, back on after the delay.
                self._update(system, power_state="Off", pending_power=None)
                target = "On"
            else:
                raise error.NotSupportedError(f"Power state {state} is not supported")
            pending = system.get("pending_power")
            if system["power_state"] == target:
                if pending:
                    self._update(system, pending_power=None)
                return
            if pending and pending.get("power_state") == target:
                return
            delay = FAULTS.on_delay() if target == "On" else FAULTS.power_delay
            if delay <= 0:
                self._update(system, power_state=target, pending_power=None)
            else:
                self._update(system, pending_power={"power_state": target, "apply_time": time.time() + delay})
            log.info("system %s: %s -> %s in %.2fs", system["name"], state, target, max(delay, 0.0))

    FakeDriver.set_power_state = set_power_state  # type: ignore[method-assign]

    # SUSHY-INTERNAL: the fake driver reports the old state until a transition lands;
    # Redfish has PoweringOn/PoweringOff for exactly that window.
    def get_power_state(self: Any, identity: str) -> str:
        system = self._get(identity)
        pending = system.get("pending_power")
        if pending:
            if pending.get("power_state") == "On" and system["power_state"] == "Off":
                return "PoweringOn"
            if pending.get("power_state") == "Off" and system["power_state"] == "On":
                return "PoweringOff"
        return system["power_state"]

    FakeDriver.get_power_state = get_power_state  # type: ignore[method-assign]

    # --- processor and memory summaries --------------------------------------------
    # SUSHY-INTERNAL: AbstractSystemsDriver.get_total_cpus/get_total_memory raise
    # NotSupportedError in the fake driver; system.json renders
    # ProcessorSummary.Count / MemorySummary.TotalSystemMemoryGiB from them.
    def get_total_cpus(self: Any, identity: str) -> int:
        return int(self._get(identity).get("cpus") or 0) or None  # type: ignore[return-value]

    def get_total_memory(self: Any, identity: str) -> Any:
        mib = int(self._get(identity).get("memory_mib") or 0)
        if not mib:
            return None
        return mib // 1024 if mib % 1024 == 0 else round(mib / 1024, 3)

    FakeDriver.get_total_cpus = get_total_cpus  # type: ignore[method-assign]
    FakeDriver.get_total_memory = get_total_memory  # type: ignore[method-assign]

    # --- data: URIs as virtual media ----------------------------------------------
    # SUSHY-INTERNAL: BaseDriver._get_image(image_url, auth, verify, custom_cert) downloads
    # the image with requests (which has no data: scheme) and returns
    # (file name, local path); StaticDriver.insert_image stores the URL as given in the
    # device's "Image" and the path in "_local_file".
    orig_get_image = vmedia.BaseDriver._get_image

    def get_image(self: Any, image_url: str, auth: Any, verify: Any, custom_cert: Any) -> tuple[str, str]:
        if not isinstance(image_url, str) or not image_url.startswith("data:"):
            return orig_get_image(self, image_url, auth, verify, custom_cert)
        try:
            payload = decode_data_uri(image_url)
        except ValueError as e:
            raise error.BadRequest(f"malformed data: URI: {e}") from e
        directory = tempfile.mkdtemp(dir=STATE_DIR, prefix="media-")
        path = os.path.join(directory, "bootstrap")
        with open(path, "wb") as f:
            f.write(payload)
        return "bootstrap", path

    vmedia.BaseDriver._get_image = get_image  # type: ignore[method-assign]

    # --- health ---------------------------------------------------------------------
    # SUSHY-INTERNAL: system.json hard-codes Status.Health "OK"; the endpoint name of
    # GET /redfish/v1/Systems/<identity> is "system_resource".
    @emulator.app.after_request
    def critical_health(response: Any) -> Any:
        request = flask.request
        if request.method != "GET" or request.endpoint != "system_resource" or response.status_code != 200:
            return response
        identity = (request.view_args or {}).get("identity")
        if identity not in FAULTS.failed:
            return response
        try:
            body = json.loads(response.get_data())
        except ValueError:
            return response
        body["Status"] = {"State": "Enabled", "Health": "Critical", "HealthRollUp": "Critical"}
        response.set_data(json.dumps(body, indent=4))
        return response


def decode_data_uri(uri: str) -> bytes:
    """RFC 2397: data:[<mediatype>][;base64],<data>."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError("expected data:[<mediatype>][;base64],<data>")
    header, data = uri[5:].split(",", 1)
    if header.endswith(";base64"):
        try:
            return base64.b64decode(urllib.parse.unquote(data), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"bad base64: {e}") from e
    return urllib.parse.unquote_to_bytes(data)


# --------------------------------------------------------------------------------------
# Views over the emulator's state
# --------------------------------------------------------------------------------------
STATE_DIR = ""


def _app() -> Any:
    from sushy_tools.emulator import main as emulator

    return emulator.app


def _find_system(instance_id: str) -> dict[str, Any] | None:
    """A system by UUID or name (the fake driver stores them by UUID)."""
    driver = _app().systems
    for system_uuid in driver.systems:
        # SUSHY-INTERNAL: FakeDriver._get returns the stored dict (copy), with any due
        # power transition applied.
        system = driver._get(system_uuid)
        if instance_id in (system["uuid"], system["name"]):
            return system
    return None


def _inserted_media(system: dict[str, Any]) -> str:
    """The decoded contents of the first inserted virtual media of a system, or ""."""
    vmedia = _app().vmedia
    for identity in (system["uuid"], system["name"]):
        for device in sorted(vmedia.devices):
            # SUSHY-INTERNAL: StaticDriver keeps {(identity, device): {"Image",
            # "Inserted", "_local_file", ...}}, keyed by the identity used in the URL.
            info = vmedia._devices.get((identity, device))
            if not info or not info.get("Inserted") or not info.get("Image"):
                continue
            image = info["Image"]
            if image.startswith("data:"):
                try:
                    return decode_data_uri(image).decode("utf-8", "replace")
                except ValueError:
                    return ""
            local = info.get("_local_file")
            if local and os.path.exists(local):
                with open(local, "rb") as f:
                    return f.read().decode("utf-8", "replace")
    return ""


def _state(system: dict[str, Any]) -> str:
    pending = system.get("pending_power") or {}
    if system["power_state"] == "On":
        return "stopping" if pending.get("power_state") == "Off" else "running"
    return "pending" if pending.get("power_state") == "On" else "stopped"


def _instance_json(system: dict[str, Any]) -> dict[str, Any]:
    return {
        "instance_id": system["uuid"],
        "name": system["name"],
        "region": "",
        "state": _state(system),
        "instance_type": "",
        "availability_zone": "",
        "user_data": _inserted_media(system),
        "spot": False,
        "vcpus": int(system.get("cpus") or 0),
        "memory_mib": int(system.get("memory_mib") or 0),
    }


def fail_system(instance_id: str) -> tuple[int, dict[str, Any]]:
    driver = _app().systems
    with FAULTS.lock:
        system = _find_system(instance_id)
        if system is None:
            return 404, {"error": f"system {instance_id} not found"}
        # SUSHY-INTERNAL: FakeDriver._update(system, **changes) persists the dict.
        driver._update(system, power_state="Off", pending_power=None)
        FAULTS.failed.add(system["uuid"])
    log.info("system %s failed: off, health Critical", system["name"])
    return 200, {"ok": True, "instance_id": system["uuid"], "state": "stopped"}


def repair_system(instance_id: str) -> tuple[int, dict[str, Any]]:
    with FAULTS.lock:
        system = _find_system(instance_id)
        if system is None:
            return 404, {"error": f"system {instance_id} not found"}
        FAULTS.failed.discard(system["uuid"])
    log.info("system %s repaired: health OK", system["name"])
    return 200, {"ok": True, "instance_id": system["uuid"]}


# --------------------------------------------------------------------------------------
# WSGI
# --------------------------------------------------------------------------------------
class BadRequest(Exception):
    pass


class CanopyApp:
    def __init__(self, redfish_app: Any) -> None:
        self.redfish_app = redfish_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "") or ""
        if path == "/_canopy" or path.startswith("/_canopy/"):
            return self.control(environ, start_response)
        return self.redfish_app(environ, start_response)

    def control(self, environ: dict[str, Any], start_response: Any) -> Any:
        from werkzeug.wrappers import Request, Response

        req = Request(environ)
        try:
            status, body = self.route(req.method, req.path, req)
        except BadRequest as e:
            status, body = 400, {"error": str(e)}
        except Exception as e:  # noqa: BLE001
            log.exception("control request %s %s failed", req.method, req.path)
            status, body = 500, {"error": f"{type(e).__name__}: {e}"}
        resp = Response(json.dumps(body) + "\n", status=status, mimetype="application/json")
        return resp(environ, start_response)

    def route(self, method: str, path: str, req: Any) -> tuple[int, Any]:
        routes = {
            ("GET", "/_canopy/health"): lambda: (200, {"ok": True}),
            ("GET", "/_canopy/instances"): self.instances,
            ("GET", "/_canopy/faults"): lambda: (200, FAULTS.describe()),
            ("POST", "/_canopy/faults/fail"): lambda: fail_system(_instance_id(req)),
            ("POST", "/_canopy/faults/repair"): lambda: repair_system(_instance_id(req)),
            ("POST", "/_canopy/faults/pending"): lambda: self.pending(req),
            ("POST", "/_canopy/faults/clear"): self.clear,
        }
        handler = routes.get((method, path.rstrip("/") or path))
        if handler is None:
            if any(p == path for (_m, p) in routes):
                return 405, {"error": f"{method} not allowed on {path}"}
            return 404, {"error": f"no route {method} {path}"}
        return handler()

    def instances(self) -> tuple[int, Any]:
        driver = _app().systems
        out = []
        with FAULTS.lock:
            for system_uuid in driver.systems:
                out.append(_instance_json(driver._get(system_uuid)))  # SUSHY-INTERNAL: see _find_system
        out.sort(key=lambda i: i["name"])
        return 200, out

    def pending(self, req: Any) -> tuple[int, Any]:
        seconds = _json_body(req).get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise BadRequest('"seconds" must be a number >= 0')
        with FAULTS.lock:
            FAULTS.boot_seconds = float(seconds)
        log.info("fault: power-on takes %ss", seconds)
        return 200, {"ok": True, "seconds": seconds}

    def clear(self) -> tuple[int, Any]:
        FAULTS.clear()
        log.info("faults cleared")
        return 200, {"ok": True}


def _json_body(req: Any) -> dict[str, Any]:
    data = req.get_data(cache=True)
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _instance_id(req: Any) -> str:
    iid = _json_body(req).get("instance_id")
    if not isinstance(iid, str) or not iid:
        raise BadRequest('"instance_id" (string) is required')
    return iid


def write_htpasswd(path: str, username: str, password: str) -> None:
    import bcrypt

    # sushy-tools checks every request against the file with bcrypt: a low cost keeps a
    # request well under a millisecond (the default cost, 12, takes ~0.25 s here).
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{username}:{digest}\n")
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (only this one)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--systems", type=int, default=None, help="make N systems node-0..node-N-1 (default 2)")
    group.add_argument("--systems-file", help="JSON list of {name, uuid?, cpus, memory_mib}")
    parser.add_argument("--username", default="admin", help="Basic auth user")
    parser.add_argument("--password", default="password", help="Basic auth password")
    parser.add_argument("--power-delay", type=float, default=0.2, help="seconds a power transition takes")
    parser.add_argument(
        "--state-dir",
        help="directory for the emulator's state (sqlite, htpasswd, media), which the caller removes; "
        "default: a fresh temporary directory removed at a clean exit (not after SIGKILL)",
    )
    parser.add_argument("--log-requests", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)

    if args.power_delay < 0:
        parser.error("--power-delay must be >= 0")
    systems = load_systems(args.systems_file) if args.systems_file else make_systems(args.systems or 2)
    FAULTS.power_delay = args.power_delay

    t0 = time.monotonic()
    global STATE_DIR
    # The fake driver and virtual media keep their state in sqlite files under
    # SUSHY_EMULATOR_STATE_DIR (default: one shared /tmp/sushy-emulator for every
    # process!): each emulator gets its own, removed at exit.
    if args.state_dir:
        os.makedirs(args.state_dir, exist_ok=True)
        STATE_DIR = args.state_dir
    else:
        STATE_DIR = tempfile.mkdtemp(prefix="canopy-redfish-")
        atexit.register(shutil.rmtree, STATE_DIR, True)
    htpasswd = os.path.join(STATE_DIR, "htpasswd")
    write_htpasswd(htpasswd, args.username, args.password)

    # SUSHY-INTERNAL: importing sushy_tools.emulator.main builds the Flask app, reading
    # SUSHY_EMULATOR_CONFIG from the environment; ours is passed to configure() instead.
    os.environ.pop("SUSHY_EMULATOR_CONFIG", None)
    from sushy_tools.emulator import main as emulator

    install_patches()
    emulator.app.configure(
        extra_config={
            "SUSHY_EMULATOR_FAKE_DRIVER": True,
            "SUSHY_EMULATOR_FAKE_SYSTEMS": fake_systems_config(systems),
            "SUSHY_EMULATOR_STATE_DIR": STATE_DIR,
            "SUSHY_EMULATOR_AUTH_FILE": htpasswd,
            "SUSHY_EMULATOR_FEATURE_SET": "full",
            "SUSHY_EMULATOR_LISTEN_IP": args.host,
        }
    )

    from werkzeug.serving import make_server

    app = CanopyApp(emulator.app)
    server = make_server(args.host, args.port, app, threaded=True)
    port = server.server_port

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Warm up: build the fake driver (it writes the systems into its sqlite file) and
    # compile the templates, so the first real request does not pay for it.
    token = base64.b64encode(f"{args.username}:{args.password}".encode()).decode()
    client = emulator.app.test_client()
    client.get("/redfish/v1/")
    for system in systems:
        client.get(f"/redfish/v1/Systems/{system['uuid']}", headers={"Authorization": f"Basic {token}"})

    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log.info("listening on %s:%s with %d systems (startup %.2fs)", args.host, port, len(systems), time.monotonic() - t0)
    sys.stdout.write(f"ready http://{args.host}:{port}\n")
    sys.stdout.flush()

    while not stop.wait(0.5):
        if not thread.is_alive():
            log.error("HTTP server thread died")
            return 1
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
