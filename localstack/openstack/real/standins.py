#!/usr/bin/env python3
"""Minimal Glance v2 + Neutron v2.0 stand-ins for running real Nova (fake virt driver).

Standard library only. One process, one port, both APIs:
  Glance:  /v2/images/{id}, /v2/images, /v2/schemas/image  (one preset public image)
  Neutron: /v2.0/{networks,subnets,ports,floatingips,security-groups,...}, /v2.0/extensions,
           /v2.0/quotas/{project}, /v2.0/auto-allocated-topology/{project} (for `networks: auto`)
Ports are kept in memory (Nova creates, binds, lists and deletes them). No auth is checked:
Nova sends its tokens, they are ignored. Every request is logged to stderr with its status,
so a call Nova makes that is not served shows up as a 404 in the log.

  standins.py --host 127.0.0.1 --port 0 --image-id UUID
  # stdout: one line "ready http://127.0.0.1:PORT"
"""
import argparse
import itertools
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
NETWORK_ID = "5e7c1a3e-0000-4000-8000-000000000001"
SUBNET_ID = "5e7c1a3e-0000-4000-8000-000000000002"
SECGROUP_ID = "5e7c1a3e-0000-4000-8000-000000000003"

IMAGE_SCHEMA = {
    "name": "image",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": ["null", "string"]},
        "status": {"type": "string"},
        "visibility": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": {"type": ["null", "string", "integer", "boolean", "array", "object"]},
    "links": [
        {"rel": "self", "href": "{self}"},
        {"rel": "enclosure", "href": "{file}"},
        {"rel": "describedby", "href": "{schema}"},
    ],
}


class State:
    def __init__(self, image_id):
        self.lock = threading.Lock()
        self.image = {
            "id": image_id, "name": "cirros", "status": "active", "visibility": "public",
            "disk_format": "qcow2", "container_format": "bare", "min_disk": 0, "min_ram": 0,
            "size": 21430272, "virtual_size": 117440512, "checksum": "c8fc807773e5354afe61636071771906",
            "os_hash_algo": "sha512", "os_hash_value": "0" * 128, "owner": None, "protected": False,
            "os_hidden": False, "tags": [], "created_at": NOW, "updated_at": NOW,
            "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file",
            "schema": "/v2/schemas/image",
        }
        self.ips = itertools.count(10)
        self.collections = {
            "networks": {NETWORK_ID: {
                "id": NETWORK_ID, "name": "canopy-auto", "status": "ACTIVE", "admin_state_up": True,
                "shared": True, "subnets": [SUBNET_ID], "mtu": 1450, "router:external": False,
                "port_security_enabled": False, "tenant_id": "", "project_id": "", "tags": [],
                "availability_zones": ["nova"], "description": "", "is_default": True,
            }},
            "subnets": {SUBNET_ID: {
                "id": SUBNET_ID, "name": "canopy-auto-subnet", "network_id": NETWORK_ID,
                "ip_version": 4, "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1", "enable_dhcp": True,
                "dns_nameservers": [], "host_routes": [], "ipv6_ra_mode": None, "ipv6_address_mode": None,
                "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.250"}],
                "tenant_id": "", "project_id": "", "subnetpool_id": None, "tags": [],
            }},
            "ports": {},
            "floatingips": {},
            "security-groups": {SECGROUP_ID: {
                "id": SECGROUP_ID, "name": "default", "description": "default", "tenant_id": "",
                "project_id": "", "security_group_rules": [],
            }},
            "security-group-rules": {},
            "segments": {},
            "trunks": {},
            "qos-policies": {},
        }

    def new_port(self, body):
        n = next(self.ips)
        port_id = str(uuid.uuid4())
        port = {
            "id": port_id, "name": "", "network_id": NETWORK_ID, "admin_state_up": True,
            "status": "ACTIVE", "mac_address": "fa:16:3e:%02x:%02x:%02x" % (n >> 16 & 255, n >> 8 & 255, n & 255),
            "fixed_ips": [{"subnet_id": SUBNET_ID, "ip_address": f"10.0.0.{n % 240 + 10}"}],
            "device_id": "", "device_owner": "", "tenant_id": "", "project_id": "",
            "security_groups": [], "port_security_enabled": False, "tags": [],
            "binding:host_id": "", "binding:vif_type": "unbound", "binding:vnic_type": "normal",
            "binding:vif_details": {}, "binding:profile": {}, "allowed_address_pairs": [],
            "extra_dhcp_opts": [], "dns_name": "", "qos_policy_id": None, "resource_request": None,
            "created_at": NOW, "updated_at": NOW,
        }
        port.update({k: v for k, v in body.items() if k != "fixed_ips"})
        if port.get("tenant_id") and not port.get("project_id"):
            port["project_id"] = port["tenant_id"]
        self.bind(port)
        return port

    @staticmethod
    def bind(port):
        # Neutron binds a port once it has a host: an OVS port that needs no real plugging.
        if port.get("binding:host_id"):
            port["binding:vif_type"] = "ovs"
            port["binding:vif_details"] = {"port_filter": True, "ovs_hybrid_plug": False}


def matches(item, query):
    for key, values in query.items():
        if key in ("fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"):
            continue
        if key not in item:
            continue  # Unknown filters are ignored (as Neutron does for some).
        value = item[key]
        if isinstance(value, list):
            continue
        if str(value) not in values and not (isinstance(value, bool) and str(value).lower() in values):
            return False
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, fmt, *args):
        sys.stderr.write("standins: " + (fmt % args) + "\n")

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def route(self, method):
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        if parts and parts[-1].endswith(".json"):
            parts[-1] = parts[-1][: -len(".json")]
        with self.state.lock:
            if not parts or parts == ["versions"]:
                return self.reply(200, {"versions": [
                    {"id": "v2.15", "status": "CURRENT", "links": [{"rel": "self", "href": "/v2/"}]},
                    {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": "/v2.0/"}]},
                ]})
            if parts[0] == "v2":
                return self.glance(method, parts[1:], query)
            if parts[0] == "v2.0":
                return self.neutron(method, parts[1:], query)
        return self.reply(404, {"error": f"not served: {method} {url.path}"})

    def glance(self, method, parts, query):
        image = self.state.image
        if parts == ["schemas", "image"]:
            return self.reply(200, IMAGE_SCHEMA)
        if parts == ["images"] and method == "GET":
            return self.reply(200, {"images": [image], "schema": "/v2/schemas/images", "first": "/v2/images"})
        if len(parts) == 2 and parts[0] == "images" and method == "GET":
            if parts[1] == image["id"]:
                return self.reply(200, image)
            return self.reply(404, {"message": f"No image found with ID {parts[1]}", "code": "404 Not Found"})
        return self.reply(404, {"message": "not served by the stand-in"})

    def neutron(self, method, parts, query):
        state = self.state
        if parts == ["extensions"]:
            aliases = ["auto-allocated-topology", "binding", "port-security", "security-group",
                       "quotas", "network_availability_zone"]
            return self.reply(200, {"extensions": [
                {"alias": a, "name": a, "description": a, "updated": NOW, "links": []} for a in aliases]})
        if len(parts) == 2 and parts[0] == "quotas":
            return self.reply(200, {"quota": {"port": -1, "network": -1, "subnet": -1, "floatingip": -1,
                                              "security_group": -1, "security_group_rule": -1, "router": -1}})
        if len(parts) == 2 and parts[0] == "auto-allocated-topology":
            if query.get("fields") == ["dry-run"]:
                return self.reply(200, {"auto_allocated_topology": {"dry-run": "pass"}})
            return self.reply(200, {"auto_allocated_topology": {"id": NETWORK_ID, "tenant_id": parts[1],
                                                                "project_id": parts[1]}})
        if not parts or parts[0] not in state.collections:
            return self.reply(404, {"NeutronError": {"type": "HTTPNotFound", "message": "not served", "detail": ""}})
        kind = parts[0]
        singular = kind[:-1] if kind != "security-groups" else "security_group"
        if kind == "security-group-rules":
            singular = "security_group_rule"
        if kind == "qos-policies":
            singular = "policy"
        items = state.collections[kind]
        key = kind.replace("-", "_")
        if len(parts) == 1:
            if method == "GET":
                return self.reply(200, {key: [i for i in items.values() if matches(i, query)]})
            if method == "POST" and kind == "ports":
                body = self.body()
                if "ports" in body:
                    made = [state.new_port(p) for p in body["ports"]]
                    for p in made:
                        items[p["id"]] = p
                    return self.reply(201, {"ports": made})
                port = state.new_port(body.get("port", {}))
                items[port["id"]] = port
                return self.reply(201, {"port": port})
            return self.reply(405, {"NeutronError": {"type": "HTTPMethodNotAllowed", "message": method, "detail": ""}})
        item = items.get(parts[1])
        if item is None:
            name = {"ports": "Port", "networks": "Network", "subnets": "Subnet"}.get(kind, "Resource")
            return self.reply(404, {"NeutronError": {"type": f"{name}NotFound",
                                                     "message": f"{name} {parts[1]} could not be found.", "detail": ""}})
        if method == "GET":
            return self.reply(200, {singular: item})
        if method == "PUT":
            item.update(self.body().get(singular, {}))
            if kind == "ports":
                state.bind(item)
            return self.reply(200, {singular: item})
        if method == "DELETE":
            del items[parts[1]]
            return self.reply(204)
        return self.reply(405, {"NeutronError": {"type": "HTTPMethodNotAllowed", "message": method, "detail": ""}})

    def do_GET(self):
        self.route("GET")

    def do_HEAD(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--image-id", required=True)
    args = parser.parse_args()
    Handler.state = State(args.image_id)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"ready http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
