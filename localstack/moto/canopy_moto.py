#!/usr/bin/env python3
"""Canopy's local EC2: moto (pinned, see requirements.txt) in server mode, in-process,
plus a small JSON control API under /_canopy/ for fault injection.

    python canopy_moto.py --host 127.0.0.1 --port 0

Everything except /_canopy/* is handed to moto's own WSGI dispatcher unchanged, so
the EC2 Query API at / (and /moto-api/) behaves exactly as `moto_server` does:
SigV4-signed requests are routed by the service/region in the signing scope.

Prints exactly one line, `ready http://HOST:PORT`, on stdout once the socket is
listening and the EC2 backend is warm; everything else goes to stderr.

This file touches moto internals. Every such place is marked `MOTO-INTERNAL`; they were
written against moto 5.2.5 (the pin in requirements.txt). Re-check them when bumping moto.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("canopy_moto")

TESTED_MOTO_VERSION = "5.2.5"

SPOT_TERMINATION = (
    "Server.SpotInstanceTermination",
    "Server.SpotInstanceTermination: Spot instance termination",
)
INTERNAL_ERROR = (
    "Server.InternalError",
    "Server.InternalError: Internal error on launch",
)


# --------------------------------------------------------------------------------------
# Fault state (shared by the control API and the moto patches)
# --------------------------------------------------------------------------------------
class Faults:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        # Seconds newly launched instances stay `pending`; 0 = off (moto's default).
        self.pending_seconds = 0.0
        # instance id -> (moto Instance, monotonic time at which it turns running)
        self.pending: dict[str, tuple[Any, float]] = {}
        # [{"instance_type", "availability_zone" | None, "remaining" | None (unlimited)}]
        self.capacity: list[dict[str, Any]] = []
        # RunInstances calls still to refuse with VcpuLimitExceeded; None = quota not
        # exhausted, -1 = refuse until cleared.
        self.quota_remaining: int | None = None

    def clear(self) -> None:
        """Remove all faults. Instances currently held in `pending` become running
        at once (the slow-boot fault is off, so nothing may stay pending)."""
        with self.lock:
            self.pending_seconds = 0.0
            self.capacity = []
            self.quota_remaining = None
            self.promote_due(force=True)

    def forget_instances(self) -> None:
        with self.lock:
            self.pending = {}

    def promote_due(self, force: bool = False) -> None:
        """Move instances whose pending time is over to `running`. Called before every
        request is served, so DescribeInstances (and its state filters) always sees the
        state the fault dictates at that moment."""
        if not self.pending:
            return
        from moto.ec2.models.instances import InstanceState

        now = time.monotonic()
        with self.lock:
            for iid, (inst, due) in list(self.pending.items()):
                # MOTO-INTERNAL: Instance._state is the InstanceState(name, code) that
                # DescribeInstances serialises and that state filters match on.
                if inst._state.name != "pending":
                    # stopped/terminated by the user or a fault meanwhile: leave it
                    del self.pending[iid]
                elif force or now >= due:
                    inst._state = InstanceState("running", 16)
                    del self.pending[iid]
                    log.info("instance %s: pending -> running", iid)

    def take_capacity_error(self, instance_type: str, zone: str) -> bool:
        """True (and one use consumed) if a capacity fault matches this RunInstances."""
        with self.lock:
            for fault in self.capacity:
                if fault["instance_type"] != instance_type:
                    continue
                if fault["availability_zone"] not in (None, zone):
                    continue
                if fault["remaining"] is not None:
                    fault["remaining"] -= 1
                    if fault["remaining"] <= 0:
                        self.capacity.remove(fault)
                return True
        return False

    def take_quota_error(self) -> bool:
        """True (and one use consumed) if the vCPU quota fault is on."""
        with self.lock:
            if self.quota_remaining is None:
                return False
            if self.quota_remaining > 0:
                self.quota_remaining -= 1
                if self.quota_remaining == 0:
                    self.quota_remaining = None
            return True

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "pending_seconds": self.pending_seconds,
                "quota_remaining": self.quota_remaining,
                "capacity": [dict(f) for f in self.capacity],
                "instances_pending": sorted(self.pending),
            }


FAULTS = Faults()


# --------------------------------------------------------------------------------------
# Patches into moto
# --------------------------------------------------------------------------------------
def install_patches() -> None:
    import moto
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.instances import InstanceBackend, InstanceState
    from moto.ec2.responses.instances import InstanceResponse

    if moto.__version__ != TESTED_MOTO_VERSION:
        log.warning(
            "moto %s installed, canopy_moto was written against %s: internals may differ",
            moto.__version__,
            TESTED_MOTO_VERSION,
        )

    # --- slow pending -------------------------------------------------------------
    # MOTO-INTERNAL: InstanceBackend.run_instances is the single place where moto creates
    # instances: RunInstances, RequestSpotInstances, spot fleets and CreateFleet all go
    # through it (EC2Backend inherits it and does not override it).
    orig_run_instances = InstanceBackend.run_instances

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        reservation = orig_run_instances(self, *args, **kwargs)
        with FAULTS.lock:
            seconds = FAULTS.pending_seconds
            if seconds > 0:
                due = time.monotonic() + seconds
                for inst in reservation.instances:
                    # MOTO-INTERNAL: Instance.__init__ sets _state running(16) directly.
                    inst._state = InstanceState("pending", 0)
                    FAULTS.pending[inst.id] = (inst, due)
        return reservation

    InstanceBackend.run_instances = run_instances  # type: ignore[method-assign]

    # --- insufficient capacity ---------------------------------------------------
    # MOTO-INTERNAL: InstanceResponse.run_instances is the RunInstances action handler
    # (only that action: spot requests and fleets are not affected). A handler may
    # return (body, headers) with headers["status"]; see BaseResponse.call_action.
    orig_run_instances_response = InstanceResponse.run_instances

    def run_instances_response(self: Any) -> Any:
        if not self._get_param("DryRun", False):
            itype, zone, explicit = _requested_type_and_zone(self)
            if FAULTS.take_quota_error():
                log.info("RunInstances %s: VcpuLimitExceeded", itype)
                err = EC2ClientError(
                    "VcpuLimitExceeded",
                    "You have requested more vCPU capacity than your current vCPU limit of 0 allows "
                    "for the instance bucket that the specified instance type belongs to. Please visit "
                    "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
                )
                _status, headers, body = self.serialized(ActionResult(err))
                body = body.replace(
                    "<RequestID>request-id</RequestID>", f"<RequestID>{uuid.uuid4()}</RequestID>"
                )
                headers = dict(headers)
                headers["status"] = 400
                return body, headers
            if FAULTS.take_capacity_error(itype, zone):
                log.info("RunInstances %s in %s: InsufficientInstanceCapacity", itype, zone)
                err = EC2ClientError(
                    "InsufficientInstanceCapacity", _capacity_message(self, itype, zone, explicit)
                )
                # Moto's own EC2 serializer gives the real error document
                # <Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/>;
                # EC2 has no error models, so moto would send 400: real EC2 sends 500.
                _status, headers, body = self.serialized(ActionResult(err))
                # moto leaves the literal "request-id" in <RequestID>; EC2 sends a UUID.
                body = body.replace(
                    "<RequestID>request-id</RequestID>", f"<RequestID>{uuid.uuid4()}</RequestID>"
                )
                headers = dict(headers)
                headers["status"] = 500
                return body, headers
        return orig_run_instances_response(self)

    InstanceResponse.run_instances = run_instances_response  # type: ignore[method-assign]


def _requested_type_and_zone(resp: Any) -> tuple[str, str, bool]:
    """Instance type and AZ a RunInstances request will land in, resolved the way moto
    resolves them. Returns (type, zone, zone_was_requested)."""
    backend = resp.ec2_backend
    template: dict[str, Any] = {}
    lt = resp._get_param("LaunchTemplate", {})
    if lt:
        try:
            # MOTO-INTERNAL: _get_template_from_args / LaunchTemplateVersion.data
            template = backend._get_template_from_args(lt).data or {}
        except Exception:  # noqa: BLE001 - moto will report the bad template itself
            template = {}
    itype = resp._get_param("InstanceType") or template.get("InstanceType") or "m1.small"

    zone = resp._get_param("Placement.AvailabilityZone")
    if not zone:
        subnet_id = resp._get_param("SubnetId")
        if not subnet_id:
            for nic in resp._get_param("NetworkInterfaces", []) or []:
                if isinstance(nic, dict) and nic.get("SubnetId"):
                    subnet_id = nic["SubnetId"]
                    break
        if subnet_id:
            try:
                zone = backend.get_subnet(subnet_id).availability_zone
            except Exception:  # noqa: BLE001
                zone = None
    if not zone:
        zone = (template.get("Placement") or {}).get("AvailabilityZone")
    if zone:
        return itype, zone, True
    # MOTO-INTERNAL: with no subnet and no placement moto puts the instance in "<region>a"
    return itype, resp.region + "a", False


def _capacity_message(resp: Any, itype: str, zone: str, explicit: bool) -> str:
    if not explicit:
        return "Insufficient capacity."
    try:
        others = [
            z.name for z in resp.ec2_backend.describe_availability_zones() if z.name != zone
        ]
    except Exception:  # noqa: BLE001
        others = []
    msg = (
        f"We currently do not have sufficient {itype} capacity in the Availability Zone "
        f"you requested ({zone}). Our system will be working on provisioning additional "
        f"capacity."
    )
    if others:
        msg += (
            f" You can currently get {itype} capacity by not specifying an Availability "
            f"Zone in your request or choosing {', '.join(others)}."
        )
    return msg


# --------------------------------------------------------------------------------------
# Views over moto's state
# --------------------------------------------------------------------------------------
def _ec2_backends() -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends


def _iter_instances() -> Any:
    # MOTO-INTERNAL: BackendDict.iter_backends() walks only the (account, region) backends
    # that exist; it does not create any. all_instances() includes terminated ones.
    for _account, region, backend in _ec2_backends().iter_backends():
        for inst in backend.all_instances():
            yield region, backend, inst


def _find_instance(instance_id: str) -> tuple[Any, Any] | None:
    for _region, backend, inst in _iter_instances():
        if inst.id == instance_id:
            return backend, inst
    return None


def _decode_user_data(user_data: Any) -> str:
    # MOTO-INTERNAL: RunInstances stores a moto.core.types.Base64EncodedString (the
    # base64 text the client sent); other paths (spot requests) may store plain str.
    if user_data is None:
        return ""
    raw = getattr(user_data, "_encoded_string", user_data)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    raw = str(raw)
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return raw


def _instance_tags(backend: Any, inst: Any) -> dict[str, str]:
    # MOTO-INTERNAL: TagBackend.tags is {resource_id: {key: value}}; Instance.get_tags()
    # gives the same but scans every tag of the region with regexes.
    tags = getattr(backend, "tags", None)
    if isinstance(tags, dict):
        return dict(tags.get(inst.id, {}))
    return {t["key"]: t["value"] for t in inst.get_tags()}


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:  # moto keeps naive UTC datetimes
        t = t.replace(tzinfo=timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def _instance_json(region: str, backend: Any, inst: Any) -> dict[str, Any]:
    # MOTO-INTERNAL: attribute names of moto.ec2.models.instances.Instance
    reason = inst.state_reason.code if inst.state_reason is not None else ""
    launch_time = getattr(inst, "launch_time", None)
    return {
        "instance_id": inst.id,
        "region": region,
        "state": inst._state.name,
        "instance_type": inst.instance_type,
        "availability_zone": inst.availability_zone,
        "user_data": _decode_user_data(inst.user_data),
        "tags": _instance_tags(backend, inst),
        # moto sets lifecycle="spot" for InstanceMarketOptions.MarketType=spot and for
        # instances launched by spot requests / spot fleets.
        "spot": inst.lifecycle == "spot",
        "state_reason": reason or None,
        "private_ip": inst.private_ip,
        "image_id": inst.image_id,
        "launch_time": _iso(launch_time),
    }


def _kill_instance(instance_id: str, code: str, message: str) -> tuple[int, dict[str, Any]]:
    found = _find_instance(instance_id)
    if found is None:
        return 404, {"error": f"instance {instance_id} not found"}
    backend, inst = found
    if inst._state.name in ("terminated", "shutting-down"):
        return 409, {"error": f"instance {instance_id} is already {inst._state.name}"}
    from moto.ec2.models.instances import StateReason

    with FAULTS.lock:
        FAULTS.pending.pop(instance_id, None)
        # MOTO-INTERNAL: Instance.terminate() releases NICs/volumes and updates fleets,
        # then sets _state terminated(48) with a user-initiated reason: overwrite that.
        inst.terminate()
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        inst._reason = f"Service initiated ({stamp})"
        inst.state_reason = StateReason(message, code)
    if code == SPOT_TERMINATION[0]:
        # MOTO-INTERNAL: close the spot request that launched it, if any (one-time
        # requests close after an interruption on real EC2).
        for req in list(getattr(backend, "spot_instance_requests", {}).values()):
            if getattr(req, "instance", None) is inst:
                req.state = "closed"
                req._status_code = "instance-terminated-no-capacity"
                req.status_message = "Spot Instance terminated due to no available capacity."
    log.info("instance %s terminated: %s", instance_id, code)
    return 200, {"ok": True, "instance_id": instance_id, "state": inst._state.name}


def reset_everything() -> None:
    # MOTO-INTERNAL: what POST /moto-api/reset does (wipes every backend of every
    # service; the EC2 backends are recreated lazily).
    from moto.moto_api._internal import moto_api_backend

    with FAULTS.lock:
        moto_api_backend.reset()
        FAULTS.pending_seconds = 0.0
        FAULTS.capacity = []
        FAULTS.forget_instances()


# --------------------------------------------------------------------------------------
# WSGI
# --------------------------------------------------------------------------------------
class CanopyApp:
    def __init__(self, moto_app: Any) -> None:
        self.moto_app = moto_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "") or ""
        if path == "/_canopy" or path.startswith("/_canopy/"):
            return self.control(environ, start_response)
        FAULTS.promote_due()
        return self.moto_app(environ, start_response)

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
            ("POST", "/_canopy/faults/interrupt"): lambda: _kill_instance(
                _instance_id(req), *SPOT_TERMINATION
            ),
            ("POST", "/_canopy/faults/fail"): lambda: _kill_instance(
                _instance_id(req), *INTERNAL_ERROR
            ),
            ("POST", "/_canopy/faults/pending"): lambda: self.pending(req),
            ("POST", "/_canopy/faults/capacity"): lambda: self.capacity(req),
            ("POST", "/_canopy/faults/quota"): lambda: self.quota(req),
            ("POST", "/_canopy/faults/clear"): self.clear,
            ("POST", "/_canopy/reset"): self.reset,
        }
        handler = routes.get((method, path.rstrip("/") or path))
        if handler is None:
            if any(p == path for (_m, p) in routes):
                return 405, {"error": f"{method} not allowed on {path}"}
            return 404, {"error": f"no route {method} {path}"}
        return handler()

    def instances(self) -> tuple[int, Any]:
        FAULTS.promote_due()
        return 200, [_instance_json(r, b, inst) for r, b, inst in _iter_instances()]

    def pending(self, req: Any) -> tuple[int, Any]:
        body = _json_body(req)
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise BadRequest('"seconds" must be a number >= 0')
        with FAULTS.lock:
            FAULTS.pending_seconds = float(seconds)
        log.info("fault: new instances pending for %ss", seconds)
        return 200, {"ok": True, "seconds": seconds}

    def capacity(self, req: Any) -> tuple[int, Any]:
        body = _json_body(req)
        itype = body.get("instance_type")
        if not isinstance(itype, str) or not itype:
            raise BadRequest('"instance_type" (string) is required')
        zone = body.get("availability_zone")
        if zone is not None and (not isinstance(zone, str) or not zone):
            raise BadRequest('"availability_zone" must be a non-empty string')
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise BadRequest('"count" must be an integer >= 1 (omit it for unlimited)')
        fault = {"instance_type": itype, "availability_zone": zone, "remaining": count}
        with FAULTS.lock:
            FAULTS.capacity.append(fault)
        log.info("fault: capacity %s", fault)
        return 200, {"ok": True, **fault}

    def quota(self, req: Any) -> tuple[int, Any]:
        body = _json_body(req)
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise BadRequest('"count" must be an integer >= 1 (omit it for until cleared)')
        with FAULTS.lock:
            FAULTS.quota_remaining = -1 if count is None else count
        log.info("fault: vCPU quota exhausted (%s)", "until cleared" if count is None else f"{count} calls")
        return 200, {"ok": True, "count": count}

    def clear(self) -> tuple[int, Any]:
        FAULTS.clear()
        log.info("faults cleared")
        return 200, {"ok": True}

    def reset(self) -> tuple[int, Any]:
        reset_everything()
        warm_up()
        log.info("reset: all moto state and faults wiped")
        return 200, {"ok": True}


class BadRequest(Exception):
    pass


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


_DISPATCHER: Any = None


def warm_up() -> None:
    """Build the EC2 Flask app and the default account's us-east-1 backend now, so the
    first real request does not pay for it (it takes a second or so)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import create_backend_app

    if _DISPATCHER is not None:
        # MOTO-INTERNAL: DomainDispatcherApplication caches one Flask app per backend
        # name in app_instances; signed EC2 requests resolve to the "ec2" backend.
        with _DISPATCHER.lock:
            if "ec2" not in _DISPATCHER.app_instances:
                _DISPATCHER.app_instances["ec2"] = create_backend_app("ec2")
    _ec2_backends()[DEFAULT_ACCOUNT_ID]["us-east-1"]


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (only this one)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--log-requests", action="store_true", help="log every HTTP request to stderr"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)

    t0 = time.monotonic()
    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    install_patches()

    global _DISPATCHER
    _DISPATCHER = DomainDispatcherApplication(create_backend_app)
    app = CanopyApp(_DISPATCHER)
    # Binds and listens here (raises if the port is taken).
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    port = server.server_port
    # moto uses MOTO_PORT to build some self-referencing URLs (as moto_server does).
    os.environ.setdefault("MOTO_PORT", str(port))

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    warm_up()
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log.info("listening on %s:%s (startup %.2fs)", args.host, port, time.monotonic() - t0)
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
