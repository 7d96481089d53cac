"""Canopy's sample app: a tiny HTTP service that says which instance answered.

It binds to $HOST:$PORT as the agent assigns them and answers every GET with a short text.
"""
import http.server
import os
import socket


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (
            f"hello from canopy: app {os.environ.get('CANOPY_APP', '?')}, "
            f"task {os.environ.get('CANOPY_TASK_ID', '?')}, "
            f"host {socket.gethostname()} pid {os.getpid()}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
    print(f"listening on http://{address[0]}:{address[1]}", flush=True)
    http.server.ThreadingHTTPServer(address, Hello).serve_forever()
