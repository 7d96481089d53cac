#!/usr/bin/env python3
"""Canopy's local Azure: a faithful fake of Azure Resource Manager for Microsoft.Compute,
the Entra ID token endpoint and the Retail Prices API, on the Python standard library only.

    python3 canopy_azure.py --host 127.0.0.1 --port 0 [--catalog core/data/prices/azure.csv]

Prints exactly one line, `ready http://HOST:PORT`, on stdout once listening; logs go to
stderr; SIGTERM stops it cleanly.

One port speaks both plain HTTP and TLS: a connection whose first byte is a TLS handshake
record is wrapped with the certificate in tls/ (signed by tls/ca.pem, valid for localhost and
127.0.0.1). TLS exists because the official Azure SDK credentials (azure_identity) refuse an
authority host that is not https; the control API and the local stack's booter use plain HTTP.

What it emulates, with the shapes real Azure uses:
* Entra ID: `POST /{tenant}/oauth2/v2.0/token` (client credentials), plus the OpenID
  discovery documents MSAL-based SDKs read (`/{tenant}/v2.0/.well-known/openid-configuration`,
  `/common/discovery/instance`).
* ARM: bearer auth, `api-version`, `x-ms-request-id`, `{"error": {code, message}}` errors,
  `{value, nextLink}` paging, resource groups, virtualMachines as long-running operations
  (`Azure-AsyncOperation` / `Location`), instanceView, `simulateEviction`, resource SKUs and
  compute usages (quota) built from the price catalog.
* Retail Prices: `/api/retail/prices` with `Items`, `NextPageLink`, `Count` and the `$filter`
  subset (`field eq 'value'` joined by `and`).
* Control API under `/_canopy/` (no auth): health, instances, faults.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import json
import logging
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger("canopy_azure")

HERE = Path(__file__).resolve().parent
DEFAULT_CATALOG = HERE.parent.parent / "core" / "data" / "prices" / "azure.csv"
DEFAULT_CLIENT_SECRET = "canopy-local-secret"
ARM_SCOPES = ("https://management.azure.com/.default", "https://management.core.windows.net//.default")
TOKEN_LIFETIME = 3599

COMPUTE_API_VERSIONS = {
    "2021-03-01", "2021-07-01", "2021-11-01", "2022-03-01", "2022-08-01", "2022-11-01",
    "2023-03-01", "2023-07-01", "2023-09-01", "2024-03-01", "2024-07-01", "2024-11-01",
}
SKUS_API_VERSIONS = {"2019-04-01", "2021-07-01"}
RESOURCES_API_VERSIONS = {"2021-04-01", "2022-09-01", "2023-07-01", "2024-03-01"}
RETAIL_PAGE = 1000
SKUS_PAGE = 1000
# Regions with availability zones "1", "2", "3" (the common zonal regions of the public cloud).
ZONAL_REGIONS = {
    "eastus", "eastus2", "westus2", "westus3", "centralus", "southcentralus", "canadacentral",
    "brazilsouth", "northeurope", "westeurope", "uksouth", "francecentral", "germanywestcentral",
    "swedencentral", "switzerlandnorth", "norwayeast", "italynorth", "polandcentral",
    "australiaeast", "japaneast", "koreacentral", "southeastasia", "eastasia", "centralindia",
    "southafricanorth", "uaenorth", "qatarcentral", "israelcentral", "mexicocentral",
}
DEFAULT_REGIONAL_CORES = 1000
ISO = "%Y-%m-%dT%H:%M:%S.%f0Z"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime(ISO)


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BadControl(Exception):
    """A control-API request with a bad field; the message names the field."""


# --------------------------------------------------------------------------------------
# The price catalog: SKUs, retail prices
# --------------------------------------------------------------------------------------
class Catalog:
    def __init__(self, path: Path) -> None:
        self.by_region: dict[str, dict[str, dict[str, Any]]] = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("provider") != "azure" or not row.get("price_ondemand_hour"):
                    continue
                entry = {
                    "region": row["region"],
                    "name": row["instance_type"],
                    "vcpus": int(float(row["vcpus"])),
                    "memory_gib": float(row["memory_gib"]),
                    "gpus": int(float(row["gpus"] or 0)),
                    "arch": row["arch"] or "amd64",
                    "ondemand": float(row["price_ondemand_hour"]),
                    "spot": float(row["price_spot_hour"]) if row["price_spot_hour"] else None,
                }
                self.by_region.setdefault(row["region"], {})[row["instance_type"].lower()] = entry
        self.regions = sorted(self.by_region)
        log.info("catalog %s: %d regions", path, len(self.regions))

    def sku(self, region: str, size: str) -> dict[str, Any] | None:
        return self.by_region.get(region, {}).get(size.lower())

    def sku_in_any_region(self, size: str) -> dict[str, Any] | None:
        for skus in self.by_region.values():
            if size.lower() in skus:
                return skus[size.lower()]
        return None


def sku_parts(size: str) -> tuple[str, str]:
    """`Standard_D2s_v3` -> ("D2s v3", "DSv3"): the retail price skuName and the series."""
    short = size.removeprefix("Standard_").removeprefix("Basic_")
    m = re.match(r"([A-Za-z]+)(\d+)(-\d+)?([a-z]*)(?:_([A-Za-z0-9_]+))?$", short)
    series = short
    if m:
        series = m.group(1).upper() + m.group(4).upper() + (m.group(5) or "").replace("_", "")
    return short.replace("_", " "), series


def family(size: str) -> str:
    """The quota family of a size, as in usages: `standardDSv3Family`."""
    return f"standard{sku_parts(size)[1]}Family"


def zones_of(region: str) -> list[str]:
    return ["1", "2", "3"] if region in ZONAL_REGIONS else []


def resource_sku(entry: dict[str, Any]) -> dict[str, Any]:
    region = entry["region"]
    caps = {
        "vCPUs": str(entry["vcpus"]),
        "vCPUsAvailable": str(entry["vcpus"]),
        "MemoryGB": f"{entry['memory_gib']:g}",
        "CpuArchitectureType": "Arm64" if entry["arch"] == "arm64" else "x64",
        "LowPriorityCapable": "True" if entry["spot"] is not None else "False",
        "HyperVGenerations": "V1,V2",
    }
    if entry["gpus"]:
        caps["GPUs"] = str(entry["gpus"])
    zones = zones_of(region)
    return {
        "resourceType": "virtualMachines",
        "name": entry["name"],
        "tier": "Standard",
        "size": entry["name"].removeprefix("Standard_"),
        "family": family(entry["name"]),
        "locations": [region],
        "locationInfo": [{"location": region, "zones": zones, "zoneDetails": []}],
        "capabilities": [{"name": k, "value": v} for k, v in caps.items()],
        "restrictions": [],
    }


def retail_items(entry: dict[str, Any]) -> list[dict[str, Any]]:
    sku_name, series = sku_parts(entry["name"])
    base = {
        "currencyCode": "USD",
        "tierMinimumUnits": 0.0,
        "armRegionName": entry["region"],
        "location": entry["region"],
        "effectiveStartDate": "2024-01-01T00:00:00Z",
        "productName": f"Virtual Machines {series} Series",
        "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8",
        "serviceFamily": "Compute",
        "unitOfMeasure": "1 Hour",
        "type": "Consumption",
        "isPrimaryMeterRegion": True,
        "armSkuName": entry["name"],
    }
    rows = []
    for suffix, price in (("", entry["ondemand"]), (" Spot", entry["spot"])):
        if price is None:
            continue
        meter = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{entry['region']}/{entry['name']}{suffix}"))
        rows.append({
            **base,
            "retailPrice": price,
            "unitPrice": price,
            "meterId": meter,
            "meterName": sku_name + suffix,
            "productId": f"DZH318Z0{series[:4].upper()}",
            "skuId": f"DZH318Z0{series[:4].upper()}/{meter[:4].upper()}",
            "skuName": sku_name + suffix,
        })
    return rows


RETAIL_FIELDS = {
    "servicename": "serviceName", "armregionname": "armRegionName", "pricetype": "type",
    "type": "type", "armskuname": "armSkuName", "skuname": "skuName", "productname": "productName",
    "servicefamily": "serviceFamily", "location": "location", "metername": "meterName",
    "currencycode": "currencyCode", "meterid": "meterId",
}


def parse_retail_filter(text: str) -> list[tuple[str, str]]:
    """`serviceName eq 'Virtual Machines' and armRegionName eq 'eastus'` -> [(field, value)]."""
    clauses = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        m = re.fullmatch(r"\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*", part, flags=re.IGNORECASE)
        if not m or m.group(1).lower() not in RETAIL_FIELDS:
            raise HttpError(400, "InvalidFilter", f"unsupported $filter clause: {part.strip()!r}")
        clauses.append((RETAIL_FIELDS[m.group(1).lower()], m.group(2).replace("''", "'")))
    return clauses


# --------------------------------------------------------------------------------------
# State: tokens, resource groups, VMs, operations, faults
# --------------------------------------------------------------------------------------
class State:
    def __init__(self, catalog: Catalog, client_secret: str, page_size: int) -> None:
        self.lock = threading.RLock()
        self.catalog = catalog
        self.client_secret = client_secret
        self.page_size = page_size
        self.tokens: dict[str, float] = {}
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.vms: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted: list[dict[str, Any]] = []
        self.operations: dict[str, dict[str, Any]] = {}
        self.clear_faults()

    def clear_faults(self) -> None:
        with self.lock:
            self.pending_seconds = 0.0
            self.quota_remaining: int | None = None
            self.capacity: list[dict[str, Any]] = []
            self.throttle_remaining = 0
            self.throttle_retry_after = 1
            for vm in self.vms.values():
                if vm["provisioningState"] == "Creating":
                    vm["ready_at"] = 0.0
            self.advance()

    def advance(self) -> None:
        """Brings every VM and operation to the state the clock dictates. Called before each
        request is served, so every read sees the same moment."""
        t = time.monotonic()
        with self.lock:
            for vm in self.vms.values():
                if vm["provisioningState"] == "Creating" and t >= vm["ready_at"]:
                    vm["provisioningState"] = "Succeeded"
                    vm["power"] = "running"
            for key, vm in list(self.vms.items()):
                if vm["provisioningState"] == "Deleting" and t >= vm["gone_at"]:
                    del self.vms[key]
                    vm["power"] = "deleted"
                    self.deleted.append(vm)
            for op in self.operations.values():
                if op["status"] == "InProgress" and t >= op["done_at"]:
                    op["status"] = op["final"]
                    op["endTime"] = now_iso()


STATE: State | None = None


def state() -> State:
    assert STATE is not None
    return STATE


def vm_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


def instance_view(vm: dict[str, Any]) -> dict[str, Any]:
    statuses = []
    ps = vm["provisioningState"]
    if ps == "Failed":
        error = vm.get("error") or {"code": "InternalOperationError", "message": "the VM failed"}
        statuses.append({
            "code": f"ProvisioningState/failed/{error['code']}",
            "level": "Error",
            "displayStatus": "Provisioning failed",
            "message": error["message"],
            "time": vm.get("failed_at", now_iso()),
        })
    elif ps == "Succeeded":
        statuses.append({"code": "ProvisioningState/succeeded", "level": "Info",
                         "displayStatus": "Provisioning succeeded", "time": vm["timeCreated"]})
    else:
        statuses.append({"code": f"ProvisioningState/{ps.lower()}", "level": "Info",
                         "displayStatus": ps})
    power = vm["power"]
    if power:
        display = {"running": "VM running", "starting": "VM starting", "stopped": "VM stopped",
                   "stopping": "VM stopping", "deallocated": "VM deallocated",
                   "deallocating": "VM deallocating"}.get(power, power)
        statuses.append({"code": f"PowerState/{power}", "level": "Info", "displayStatus": display})
    view: dict[str, Any] = {"computerName": vm["computerName"], "osName": "ubuntu", "statuses": statuses}
    if vm["zones"]:
        view["platformFaultDomain"] = 0
    return view


def vm_json(vm: dict[str, Any], expand: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "vmId": vm["vmId"],
        "hardwareProfile": {"vmSize": vm["vmSize"]},
        "storageProfile": vm["storageProfile"],
        # Like real ARM: customData and adminPassword are write-only.
        "osProfile": {k: v for k, v in vm["osProfile"].items() if k not in ("customData", "adminPassword")},
        "networkProfile": vm["networkProfile"],
        "provisioningState": vm["provisioningState"],
        "timeCreated": vm["timeCreated"],
    }
    if vm["priority"] != "Regular":
        props["priority"] = vm["priority"]
        props["evictionPolicy"] = vm["evictionPolicy"]
        props["billingProfile"] = {"maxPrice": vm["maxPrice"]}
    if expand:
        props["instanceView"] = instance_view(vm)
    body: dict[str, Any] = {
        "name": vm["name"],
        "id": vm["id"],
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm["location"],
        "tags": vm["tags"],
        "properties": props,
    }
    if vm["zones"]:
        body["zones"] = vm["zones"]
    return body


def control_state(vm: dict[str, Any]) -> str:
    if vm["power"] == "deleted" or vm["provisioningState"] == "Deleting":
        return "terminated"
    if vm["provisioningState"] == "Failed":
        return "stopped"
    return {"running": "running", "starting": "pending", "stopping": "stopping",
            "deallocating": "stopping", "stopped": "stopped", "deallocated": "stopped"}.get(vm["power"], "pending")


def control_instance(vm: dict[str, Any]) -> dict[str, Any]:
    sku = state().catalog.sku(vm["location"], vm["vmSize"]) or {"vcpus": 0, "memory_gib": 0}
    return {
        "instance_id": vm["name"],
        "region": vm["location"],
        "state": control_state(vm),
        "instance_type": vm["vmSize"],
        "availability_zone": vm["zones"][0] if vm["zones"] else "",
        "user_data": vm["user_data"],
        "spot": vm["priority"] == "Spot",
        "vcpus": sku["vcpus"],
        "memory_mib": int(sku["memory_gib"] * 1024),
    }


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------
SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourcegroups/(?P<rg>[^/]+)"
VMS = RG + r"/providers/microsoft\.compute/virtualmachines"
COMPUTE = SUB + r"/providers/microsoft\.compute"
ARM_ROUTES: list[tuple[str, str, str]] = [
    ("GET", SUB + r"/resourcegroups", "list_groups"),
    ("PUT", RG, "put_group"),
    ("GET", RG, "get_group"),
    ("HEAD", RG, "head_group"),
    ("GET", VMS, "list_vms"),
    ("PUT", VMS + r"/(?P<name>[^/]+)", "put_vm"),
    ("GET", VMS + r"/(?P<name>[^/]+)", "get_vm"),
    ("DELETE", VMS + r"/(?P<name>[^/]+)", "delete_vm"),
    ("GET", VMS + r"/(?P<name>[^/]+)/instanceview", "get_instance_view"),
    ("POST", VMS + r"/(?P<name>[^/]+)/simulateeviction", "simulate_eviction"),
    ("GET", COMPUTE + r"/virtualmachines", "list_all_vms"),
    ("GET", COMPUTE + r"/skus", "list_skus"),
    ("GET", COMPUTE + r"/locations/(?P<loc>[^/]+)/usages", "list_usages"),
    ("GET", COMPUTE + r"/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", "get_operation"),
    ("GET", COMPUTE + r"/locations/(?P<loc>[^/]+)/operationresults/(?P<op>[^/]+)", "get_operation_result"),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "canopy-azure"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    # ----- plumbing -----
    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def base_url(self) -> str:
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        return f"{scheme}://{host}"

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self) -> Any:
        raw = self.read_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise HttpError(400, "InvalidRequestContent", f"The request content was invalid and could not be deserialized: {e}")

    def send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("x-ms-correlation-request-id", str(uuid.uuid4()))
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        state().advance()
        try:
            if path.startswith("/_canopy"):
                return self.control(method, path)
            if path == "/api/retail/prices" and method == "GET":
                return self.retail_prices(query)
            if re.fullmatch(r"/[^/]+/oauth2/v2\.0/token", path):
                return self.token(method, path)
            if re.fullmatch(r"/[^/]+/v2\.0/\.well-known/openid-configuration", path) and method == "GET":
                return self.openid_configuration(path.split("/")[1])
            if path == "/common/discovery/instance" and method == "GET":
                return self.instance_discovery()
            self.arm(method, path, query)
        except HttpError as e:
            self.send(e.status, {"error": {"code": e.code, "message": e.message}}, e.headers)
        except BadControl as e:
            self.send(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a fake must answer, not die
            log.exception("internal error")
            self.send(500, {"error": {"code": "InternalServerError", "message": str(e)}})

    # ----- Entra ID -----
    def token(self, method: str, path: str) -> None:
        tenant = path.split("/")[1]
        if method != "POST":
            raise HttpError(405, "MethodNotAllowed", "use POST")
        form = {k: v[-1] for k, v in parse_qs(self.read_body().decode()).items()}
        trace = str(uuid.uuid4())

        def aad_error(status: int, error: str, code: int, description: str) -> None:
            self.send(status, {
                "error": error,
                "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                                     f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {now_iso()}",
                "error_codes": [code],
                "timestamp": now_iso(),
                "trace_id": trace,
                "correlation_id": str(uuid.uuid4()),
            })

        if form.get("grant_type") != "client_credentials":
            return aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if not form.get("client_id"):
            return aad_error(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
        if form.get("client_secret") != state().client_secret:
            return aad_error(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent in the request is the "
                             f"client secret value, not the client secret ID, for a secret added to app '{form['client_id']}'.")
        if form.get("scope") not in ARM_SCOPES:
            return aad_error(400, "invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} is not valid.")
        token = secrets.token_urlsafe(48)
        with state().lock:
            state().tokens[token] = time.time() + TOKEN_LIFETIME
        log.info("token issued tenant=%s client_id=%s", tenant, form["client_id"])
        self.send(200, {"token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "ext_expires_in": TOKEN_LIFETIME,
                        "access_token": token})

    def openid_configuration(self, tenant: str) -> None:
        base = self.base_url()
        self.send(200, {
            "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "issuer": f"{base}/{tenant}/v2.0",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
        })

    def instance_discovery(self) -> None:
        host = urlsplit(self.base_url()).netloc
        self.send(200, {
            "tenant_discovery_endpoint": f"{self.base_url()}/common/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    # ----- Retail Prices -----
    def retail_prices(self, query: dict[str, str]) -> None:
        clauses = parse_retail_filter(query["$filter"]) if query.get("$filter") else []
        skip = int(query.get("$skip") or 0)
        catalog = state().catalog
        regions = [v for f, v in clauses if f == "armRegionName"] or catalog.regions
        items: list[dict[str, Any]] = []
        for region in regions:
            for entry in catalog.by_region.get(region, {}).values():
                for item in retail_items(entry):
                    if all(item.get(f) == v for f, v in clauses):
                        items.append(item)
        page = items[skip:skip + RETAIL_PAGE]
        next_link = None
        if skip + RETAIL_PAGE < len(items):
            q = {k: v for k, v in query.items() if k != "$skip"}
            q["$skip"] = str(skip + RETAIL_PAGE)
            next_link = f"{self.base_url()}/api/retail/prices?{urlencode(q)}"
        self.send(200, {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                        "Items": page, "NextPageLink": next_link, "Count": len(page)})

    # ----- ARM envelope -----
    def arm(self, method: str, path: str, query: dict[str, str]) -> None:
        for m, pattern, name in ARM_ROUTES:
            match = re.fullmatch(pattern, path, flags=re.IGNORECASE)
            if match and m == method:
                break
        else:
            raise HttpError(404, "NotFound" if path.lower().startswith("/subscriptions") else "InvalidResourceType",
                            f"No HTTP resource was found that matches the request URI '{self.base_url()}{self.path}'.")
        self.authenticate()
        st = state()
        with st.lock:
            if st.throttle_remaining:
                st.throttle_remaining -= 1
                raise HttpError(429, "TooManyRequests",
                                "The request is being throttled as the limit has been reached for operation type "
                                "- Read_ObjectId. For more information, see - https://aka.ms/srpthrottlinglimits",
                                {"Retry-After": str(st.throttle_retry_after)})
        version = query.get("api-version")
        if not version:
            raise HttpError(400, "MissingApiVersionParameter",
                            "The api-version query parameter (?api-version=) is required for all requests.")
        supported = (SKUS_API_VERSIONS if name == "list_skus" else
                     RESOURCES_API_VERSIONS if "group" in name else COMPUTE_API_VERSIONS)
        if version not in supported:
            raise HttpError(400, "InvalidApiVersionParameter",
                            f"The api-version '{version}' is invalid. The supported versions are "
                            f"'{','.join(sorted(supported, reverse=True))}'.")
        getattr(self, name)(query=query, version=version, **match.groupdict())

    def authenticate(self) -> None:
        challenge = {"WWW-Authenticate": 'Bearer authorization_uri="%s/common/oauth2/authorize", '
                                         'error="invalid_token", error_description="The authentication '
                                         'failed because of missing \'Authorization\' header."' % self.base_url()}
        header = self.headers.get("Authorization") or ""
        if not header.lower().startswith("bearer "):
            raise HttpError(401, "AuthenticationFailed",
                            "Authentication failed. The 'Authorization' header is missing.", challenge)
        expiry = state().tokens.get(header[7:].strip())
        if expiry is None:
            raise HttpError(401, "InvalidAuthenticationToken", "The access token is invalid.", challenge)
        if expiry <= time.time():
            raise HttpError(401, "ExpiredAuthenticationToken",
                            "The access token expiry UTC time is earlier than current UTC time.", challenge)

    def page(self, items: list[Any], query: dict[str, str], size: int) -> dict[str, Any]:
        skip = int(query.get("$skiptoken") or 0)
        body: dict[str, Any] = {"value": items[skip:skip + size]}
        if skip + size < len(items):
            q = dict(query)
            q["$skiptoken"] = str(skip + size)
            body["nextLink"] = f"{self.base_url()}{urlsplit(self.path).path}?{urlencode(q)}"
        return body

    def group(self, sub: str, rg: str) -> dict[str, Any]:
        group = state().groups.get((sub, rg.lower()))
        if group is None:
            raise HttpError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def vm(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        self.group(sub, rg)
        vm = state().vms.get((sub, rg.lower(), name.lower()))
        if vm is None:
            raise HttpError(404, "ResourceNotFound",
                            f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{rg}' "
                            "was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return vm

    # ----- resource groups -----
    def list_groups(self, sub: str, query: dict[str, str], version: str) -> None:
        groups = [g for (s, _), g in sorted(state().groups.items()) if s == sub]
        self.send(200, self.page(groups, query, state().page_size))

    def put_group(self, sub: str, rg: str, query: dict[str, str], version: str) -> None:
        body = self.json_body()
        if not body.get("location"):
            raise HttpError(400, "LocationRequired", "The location property is required for this definition.")
        with state().lock:
            existing = state().groups.get((sub, rg.lower()))
            group = {"id": f"/subscriptions/{sub}/resourceGroups/{rg}", "name": rg,
                     "type": "Microsoft.Resources/resourceGroups", "location": body["location"],
                     "tags": body.get("tags") or {}, "properties": {"provisioningState": "Succeeded"}}
            if existing:
                group["name"], group["id"], group["location"] = existing["name"], existing["id"], existing["location"]
            state().groups[(sub, rg.lower())] = group
        self.send(200 if existing else 201, group)

    def get_group(self, sub: str, rg: str, query: dict[str, str], version: str) -> None:
        self.send(200, self.group(sub, rg))

    def head_group(self, sub: str, rg: str, query: dict[str, str], version: str) -> None:
        self.send(204 if (sub, rg.lower()) in state().groups else 404)

    # ----- virtual machines -----
    def operation(self, sub: str, location: str, final: str, done_at: float, version: str,
                  error: dict[str, str] | None = None) -> tuple[str, str]:
        op = str(uuid.uuid4())
        with state().lock:
            state().operations[op] = {"name": op, "status": "InProgress", "final": final, "error": error,
                                      "startTime": now_iso(), "done_at": done_at}
            state().advance()
        base = f"{self.base_url()}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}"
        suffix = f"{op}?p={uuid.uuid4()}&api-version={version}"
        return f"{base}/operations/{suffix}", f"{base}/operationresults/{suffix}"

    def put_vm(self, sub: str, rg: str, name: str, query: dict[str, str], version: str) -> None:
        st = state()
        body = self.json_body()
        self.group(sub, rg)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}[A-Za-z0-9_]|[A-Za-z0-9]", name):
            raise HttpError(400, "InvalidResourceName", f"The resource name '{name}' is invalid.")
        spec = parse_vm_body(body)
        location = spec["location"]
        sku = st.catalog.sku(location, spec["vmSize"])
        with st.lock:
            existing = st.vms.get((sub, rg.lower(), name.lower()))
            if existing:
                return self.update_vm(existing, spec, version)
            if sku is None:
                raise HttpError(409, "SkuNotAvailable",
                                f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                                f"Restrictions: {spec['vmSize']}' is currently not available in location "
                                f"'{location}'. Please try another size or deploy to a different location or "
                                "different zone. See https://aka.ms/azureskunotavailable for details.")
            if spec["zones"] and (len(spec["zones"]) != 1 or spec["zones"][0] not in zones_of(location)):
                raise HttpError(400, "InvalidParameter",
                                f"The zones {spec['zones']} are not supported for location '{location}'.")
            spot = spec["priority"] == "Spot"
            if spot and spec["maxPrice"] != -1 and sku["spot"] is not None and spec["maxPrice"] < sku["spot"]:
                raise HttpError(409, "OperationNotAllowed",
                                f"Unable to perform operation 'Create VM' since the provided MaxPrice "
                                f"'{spec['maxPrice']} USD' is lower than the current spot price "
                                f"'{sku['spot']} USD' for Azure Spot VM size '{spec['vmSize']}' in location "
                                f"'{location}'.")
            self.check_quota(sub, location, spec["vmSize"], sku["vcpus"], spot)
            error = self.take_capacity(spec["vmSize"], spec["zones"])
            t = time.monotonic()
            vm = {
                "sub": sub, "rg": rg, "name": name, "id": vm_id(sub, rg, name), "vmId": str(uuid.uuid4()),
                "location": location, "tags": spec["tags"], "zones": spec["zones"], "vmSize": spec["vmSize"],
                "storageProfile": spec["storageProfile"], "osProfile": spec["osProfile"],
                "networkProfile": spec["networkProfile"], "priority": spec["priority"],
                "evictionPolicy": spec["evictionPolicy"], "maxPrice": spec["maxPrice"],
                "computerName": spec["osProfile"].get("computerName", name), "user_data": spec["user_data"],
                "customData": spec["osProfile"].get("customData"), "timeCreated": now_iso(),
                "provisioningState": "Creating", "power": "starting", "ready_at": t + st.pending_seconds,
                "error": None, "vcpus": sku["vcpus"],
            }
            st.vms[(sub, rg.lower(), name.lower())] = vm
            response = vm_json(vm, expand=False)
            if error:
                vm.update(provisioningState="Failed", power=None, error=error, failed_at=now_iso())
                async_url, _ = self.operation(sub, location, "Failed", t, version, error)
            else:
                async_url, _ = self.operation(sub, location, "Succeeded", vm["ready_at"], version)
        log.info("vm created name=%s size=%s location=%s spot=%s", name, spec["vmSize"], location, spot)
        self.send(201, response, {"Azure-AsyncOperation": async_url, "Azure-AsyncNotification": "Enabled"})

    def update_vm(self, vm: dict[str, Any], spec: dict[str, Any], version: str) -> None:
        # Resizing is an update; these are fixed at creation, as in ARM.
        fixed = (("priority", spec["priority"], vm["priority"]), ("location", spec["location"], vm["location"]),
                 ("zones", spec["zones"], vm["zones"]),
                 ("osProfile.customData", spec["osProfile"].get("customData"), vm["customData"]))
        for label, wanted, current in fixed:
            if wanted != current:
                raise HttpError(409, "PropertyChangeNotAllowed", f"Changing property '{label}' is not allowed.")
        vm["tags"] = spec["tags"]
        vm["vmSize"] = spec["vmSize"]
        async_url, _ = self.operation(vm["sub"], vm["location"], "Succeeded", time.monotonic(), version)
        self.send(200, vm_json(vm, expand=False), {"Azure-AsyncOperation": async_url})

    def check_quota(self, sub: str, location: str, size: str, vcpus: int, spot: bool) -> None:
        st = state()
        used = sum(v["vcpus"] for v in st.vms.values()
                   if v["sub"] == sub and v["location"] == location and (v["priority"] == "Spot") == spot
                   and v["power"] not in ("deallocated", "deleted") and v["provisioningState"] != "Failed")
        limit = DEFAULT_REGIONAL_CORES
        refuse = used + vcpus > limit
        if st.quota_remaining is not None:
            refuse = True
            limit = used
            if st.quota_remaining > 0:
                st.quota_remaining -= 1
                if st.quota_remaining == 0:
                    st.quota_remaining = None
        if refuse:
            what = "Low Priority Cores" if spot else f"{family(size)} Cores"
            raise HttpError(409, "OperationNotAllowed",
                            f"Operation could not be completed as it results in exceeding approved {what} quota. "
                            f"Additional details - Deployment Model: Resource Manager, Location: {location}, "
                            f"Current Limit: {limit}, Current Usage: {used}, Additional Required: {vcpus}, "
                            f"(Minimum) New Limit Required: {used + vcpus}. Submit a request for Quota increment at "
                            "https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView "
                            "by specifying parameters listed in the 'Details' section for deployment to succeed.")

    def take_capacity(self, size: str, zones: list[str]) -> dict[str, str] | None:
        st = state()
        for fault in st.capacity:
            if fault["instance_type"].lower() != size.lower():
                continue
            if fault["remaining"] is not None:
                fault["remaining"] -= 1
                if fault["remaining"] <= 0:
                    st.capacity.remove(fault)
            if zones:
                return {"code": "ZonalAllocationFailed",
                        "message": "Allocation failed. We do not have sufficient capacity for the requested VM size "
                                   "in this zone. Read more about improving likelihood of allocation success at "
                                   "http://aka.ms/allocation-guidance"}
            return {"code": "AllocationFailed",
                    "message": "Allocation failed. We do not have sufficient capacity for the requested VM size in "
                               "this region. Read more about improving likelihood of allocation success at "
                               "http://aka.ms/allocation-guidance"}
        return None

    def get_vm(self, sub: str, rg: str, name: str, query: dict[str, str], version: str) -> None:
        expand = query.get("$expand", "").lower() == "instanceview"
        self.send(200, vm_json(self.vm(sub, rg, name), expand))

    def get_instance_view(self, sub: str, rg: str, name: str, query: dict[str, str], version: str) -> None:
        self.send(200, instance_view(self.vm(sub, rg, name)))

    def delete_vm(self, sub: str, rg: str, name: str, query: dict[str, str], version: str) -> None:
        st = state()
        with st.lock:
            self.group(sub, rg)
            vm = st.vms.get((sub, rg.lower(), name.lower()))
            if vm is None:
                return self.send(204)
            t = time.monotonic()
            if vm["provisioningState"] != "Deleting":
                vm.update(provisioningState="Deleting", gone_at=t + 0.2)
                if vm["power"] in ("running", "starting"):
                    vm["power"] = "stopping"
            async_url, location = self.operation(sub, vm["location"], "Succeeded", vm["gone_at"], version)
        log.info("vm deleting name=%s", name)
        self.send(202, None, {"Location": location, "Azure-AsyncOperation": async_url, "Retry-After": "1"})

    def simulate_eviction(self, sub: str, rg: str, name: str, query: dict[str, str], version: str) -> None:
        with state().lock:
            vm = self.vm(sub, rg, name)
            if vm["priority"] != "Spot":
                raise HttpError(409, "OperationNotAllowed",
                                "Simulate eviction is only supported for Spot virtual machines.")
            evict(vm)
        self.send(204)

    def list_vms(self, sub: str, rg: str, query: dict[str, str], version: str) -> None:
        self.group(sub, rg)
        vms = [vm_json(v, False) for k, v in sorted(state().vms.items()) if k[0] == sub and k[1] == rg.lower()]
        self.send(200, self.page(vms, query, state().page_size))

    def list_all_vms(self, sub: str, query: dict[str, str], version: str) -> None:
        status_only = query.get("statusOnly", "").lower() == "true"
        vms = [vm_json(v, status_only) for k, v in sorted(state().vms.items()) if k[0] == sub]
        self.send(200, self.page(vms, query, state().page_size))

    def list_skus(self, sub: str, query: dict[str, str], version: str) -> None:
        catalog = state().catalog
        regions = catalog.regions
        if query.get("$filter"):
            m = re.fullmatch(r"\s*location\s+eq\s+'([^']*)'\s*", query["$filter"], flags=re.IGNORECASE)
            if not m:
                raise HttpError(400, "InvalidFilter", "Only the filter 'location eq <location>' is supported.")
            regions = [m.group(1)]
        skus = [resource_sku(e) for r in regions for _, e in sorted(catalog.by_region.get(r, {}).items())]
        self.send(200, self.page(skus, query, SKUS_PAGE))

    def list_usages(self, sub: str, loc: str, query: dict[str, str], version: str) -> None:
        st = state()
        live = [v for v in st.vms.values() if v["sub"] == sub and v["location"] == loc
                and v["power"] not in ("deallocated", "deleted") and v["provisioningState"] != "Failed"]
        regular = [v for v in live if v["priority"] != "Spot"]
        limit = sum(v["vcpus"] for v in regular) if st.quota_remaining is not None else DEFAULT_REGIONAL_CORES

        def usage(name: str, localized: str, current: int, cap: int) -> dict[str, Any]:
            return {"currentValue": current, "limit": cap, "name": {"value": name, "localizedValue": localized},
                    "unit": "Count"}

        values = [
            usage("cores", "Total Regional vCPUs", sum(v["vcpus"] for v in regular), limit),
            usage("virtualMachines", "Virtual Machines", len(live), 25000),
            usage("lowPriorityCores", "Total Regional Low-priority vCPUs",
                  sum(v["vcpus"] for v in live if v["priority"] == "Spot"), DEFAULT_REGIONAL_CORES),
        ]
        families: dict[str, int] = {}
        for v in regular:
            families[family(v["vmSize"])] = families.get(family(v["vmSize"]), 0) + v["vcpus"]
        for name, current in sorted(families.items()):
            values.append(usage(name, f"Standard {name[8:-6]} Family vCPUs", current, limit))
        self.send(200, {"value": values})

    def get_operation(self, sub: str, loc: str, op: str, query: dict[str, str], version: str) -> None:
        operation = state().operations.get(op)
        if operation is None:
            raise HttpError(404, "ResourceNotFound", f"The operation '{op}' was not found.")
        body = {k: operation[k] for k in ("name", "status", "startTime")}
        if operation["status"] != "InProgress":
            body["endTime"] = operation.get("endTime", now_iso())
        if operation["status"] == "Failed":
            body["error"] = operation["error"]
        self.send(200, body, {"Retry-After": "1"} if operation["status"] == "InProgress" else None)

    def get_operation_result(self, sub: str, loc: str, op: str, query: dict[str, str], version: str) -> None:
        operation = state().operations.get(op)
        if operation is None:
            raise HttpError(404, "ResourceNotFound", f"The operation '{op}' was not found.")
        if operation["status"] == "InProgress":
            return self.send(202, None, {"Location": f"{self.base_url()}{self.path}", "Retry-After": "1"})
        if operation["status"] == "Failed":
            raise HttpError(409, operation["error"]["code"], operation["error"]["message"])
        self.send(204)

    # ----- control API -----
    def control(self, method: str, path: str) -> None:
        st = state()
        if (method, path) == ("GET", "/_canopy/health"):
            return self.send(200, {"ok": True})
        if (method, path) == ("GET", "/_canopy/instances"):
            with st.lock:
                vms = [control_instance(v) for v in list(st.vms.values()) + st.deleted]
            return self.send(200, vms)
        if (method, path) == ("GET", "/_canopy/faults"):
            return self.send(200, {"pending_seconds": st.pending_seconds, "quota_remaining": st.quota_remaining,
                                   "capacity": st.capacity, "throttle_remaining": st.throttle_remaining})
        if method != "POST":
            raise HttpError(404, "NotFound", f"no control route {method} {path}")
        body = self.json_body()
        if not isinstance(body, dict):
            raise BadControl("body: expected a JSON object")
        with st.lock:
            if path == "/_canopy/faults/clear":
                st.clear_faults()
            elif path == "/_canopy/tokens/expire":
                st.tokens = {t: 0.0 for t in st.tokens}
            elif path in ("/_canopy/faults/interrupt", "/_canopy/faults/fail"):
                vm = find_vm(required_str(body, "instance_id"))
                if path.endswith("interrupt"):
                    if vm["priority"] != "Spot":
                        raise BadControl(f"instance_id: {vm['name']} is not a Spot VM")
                    evict(vm)
                else:
                    vm.update(provisioningState="Failed", power="stopped", failed_at=now_iso(), error={
                        "code": "InternalOperationError",
                        "message": "The virtual machine's host failed and the VM was stopped."})
            elif path == "/_canopy/faults/quota":
                count = optional_count(body)
                st.quota_remaining = -1 if count is None else count
            elif path == "/_canopy/faults/capacity":
                st.capacity.append({"instance_type": required_str(body, "instance_type"),
                                    "remaining": optional_count(body)})
            elif path == "/_canopy/faults/pending":
                seconds = body.get("seconds")
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                    raise BadControl("seconds: expected a non-negative number")
                st.pending_seconds = float(seconds)
            elif path == "/_canopy/faults/throttle":
                count = optional_count(body)
                retry_after = body.get("retry_after", 1)
                if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
                    raise BadControl("retry_after: expected a non-negative integer")
                st.throttle_remaining, st.throttle_retry_after = (1 if count is None else count), retry_after
            else:
                raise HttpError(404, "NotFound", f"no control route POST {path}")
        log.info("control %s %s", path, json.dumps(body))
        self.send(200, {"ok": True})


def required_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise BadControl(f"{field}: expected a non-empty string")
    return value


def optional_count(body: dict[str, Any]) -> int | None:
    count = body.get("count")
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadControl("count: expected a positive integer")
    return count


def find_vm(instance_id: str) -> dict[str, Any]:
    for vm in state().vms.values():
        if instance_id in (vm["name"], vm["vmId"], vm["id"]):
            return vm
    raise BadControl(f"instance_id: no VM {instance_id!r}")


def evict(vm: dict[str, Any]) -> None:
    """A Spot eviction as Azure does it: Deallocate keeps the VM, deallocated; Delete removes it."""
    st = state()
    vm["evicted_at"] = now_iso()
    if vm["evictionPolicy"] == "Delete":
        del st.vms[(vm["sub"], vm["rg"].lower(), vm["name"].lower())]
        vm["power"] = "deleted"
        st.deleted.append(vm)
    else:
        vm.update(provisioningState="Succeeded", power="deallocated")
    log.info("vm evicted name=%s policy=%s", vm["name"], vm["evictionPolicy"])


def parse_vm_body(body: Any) -> dict[str, Any]:
    def invalid(target: str, message: str) -> HttpError:
        return HttpError(400, "InvalidParameter", f"{message} Target: '{target}'.")

    if not isinstance(body, dict):
        raise HttpError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    if not body.get("location"):
        raise HttpError(400, "LocationRequired", "The location property is required for this definition.")
    props = body.get("properties") or {}
    size = (props.get("hardwareProfile") or {}).get("vmSize")
    if not size:
        raise invalid("vmSize", "Required parameter 'hardwareProfile.vmSize' is missing (null).")
    storage = props.get("storageProfile") or {}
    if not storage.get("imageReference"):
        raise invalid("imageReference", "Required parameter 'storageProfile.imageReference' is missing (null).")
    os_profile = dict(props.get("osProfile") or {})
    if not os_profile.get("adminUsername"):
        raise invalid("adminUsername", "Required parameter 'osProfile.adminUsername' is missing (null).")
    network = props.get("networkProfile") or {}
    if not (network.get("networkInterfaces") or network.get("networkInterfaceConfigurations")):
        raise invalid("networkProfile", "Required parameter 'networkProfile' is missing (null).")
    user_data = ""
    if os_profile.get("customData"):
        try:
            user_data = base64.b64decode(os_profile["customData"], validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            raise invalid("customData", "Custom data in OSProfile must be in Base64 encoding.")
    priority = props.get("priority") or "Regular"
    if priority not in ("Regular", "Low", "Spot"):
        raise invalid("priority", f"The value '{priority}' of parameter 'priority' is not allowed.")
    eviction = props.get("evictionPolicy") or ("Deallocate" if priority == "Spot" else None)
    if priority == "Spot" and eviction not in ("Deallocate", "Delete"):
        raise invalid("evictionPolicy", f"The value '{eviction}' of parameter 'evictionPolicy' is not allowed.")
    max_price = (props.get("billingProfile") or {}).get("maxPrice", -1)
    if priority != "Spot":
        eviction, max_price = None, -1
    zones = body.get("zones") or []
    tags = body.get("tags") or {}
    for key in tags:
        if any(c in key for c in "<>%&\\?/") or len(key) > 512:
            raise invalid("tags", f"The tag name '{key}' has invalid characters.")
    return {"location": body["location"], "vmSize": size, "storageProfile": storage, "osProfile": os_profile,
            "networkProfile": network, "priority": priority, "evictionPolicy": eviction, "maxPrice": max_price,
            "zones": [str(z) for z in zones], "tags": tags, "user_data": user_data}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        super().__init__(address, Handler)
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        # One port, two protocols: a TLS ClientHello starts with the handshake record type 0x16.
        if self.tls is not None:
            try:
                request.settimeout(10)
                first = request.recv(1, socket.MSG_PEEK)
                request.settimeout(None)
                if first == b"\x16":
                    request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.info("tls handshake failed from %s: %s", client_address, e)
                return
        super().finish_request(request, client_address)


def main() -> None:
    global STATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET,
                        help="the client secret the token endpoint accepts (any tenant and client id)")
    parser.add_argument("--page-size", type=int, default=100, help="items per page of VM and group lists")
    parser.add_argument("--tls-cert", type=Path, default=HERE / "tls" / "server.pem")
    parser.add_argument("--tls-key", type=Path, default=HERE / "tls" / "server.key")
    parser.add_argument("--no-tls", action="store_true", help="serve plain HTTP only")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    STATE = State(Catalog(args.catalog), args.client_secret, max(1, args.page_size))
    tls = None
    if not args.no_tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    server = Server((args.host, args.port), tls)

    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"ready http://{host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log.info("stopped")


if __name__ == "__main__":
    main()
