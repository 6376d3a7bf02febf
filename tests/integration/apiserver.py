"""A Kubernetes API server's pod endpoints, enough for the real `kubernetes` client in the lab: no cluster here.

    python -m tests.integration.apiserver KUBECONFIG PODS_JSON

PODS_JSON lists pods as {"namespace", "name", "ip", "labels", "node"}. It
serves, on 127.0.0.1 of the namespace it runs in, what bpftap asks of an API
server: the list of pods (GET /api/v1/pods, a fieldSelector spec.nodeName=N
honoured), a watch on it (held open with no event until the client leaves)
and one pod (GET /api/v1/namespaces/NS/pods/NAME, 404 Status if absent). It
writes a kubeconfig pointing at itself to KUBECONFIG, prints "ready" and
serves until its stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: lab, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: lab, user: {{token: lab}}}}]
contexts: [{{name: lab, context: {{cluster: lab, user: lab}}}}]
current-context: lab
"""


def pod_object(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p["name"], "namespace": p["namespace"], "uid": f"uid-{p['namespace']}-{p['name']}",
                     "labels": p.get("labels", {}), "resourceVersion": "1"},
        "spec": {"nodeName": p["node"], "containers": [{"name": "main", "image": "lab"}]},
        "status": {"phase": "Running", "podIP": p["ip"], "podIPs": [{"ip": p["ip"]}]},
    }


class Handler(BaseHTTPRequestHandler):
    pods: ClassVar[list[dict[str, Any]]] = []
    stop = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if url.path == "/api/v1/pods" and query.get("watch") in ("true", "1"):
            self.send_response(200)  # a watch with no event: held open until the client goes or the server stops
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + float(query.get("timeoutSeconds", "300"))
            while not self.stop.wait(0.5) and time.monotonic() < deadline:
                pass
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/api/v1/pods":
            node = query.get("fieldSelector", "").removeprefix("spec.nodeName=")
            items = [pod_object(p) for p in self.pods if not node or p["node"] == node]
            self.send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                            "items": items})
        elif len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            found = [p for p in self.pods if (p["namespace"], p["name"]) == (parts[3], parts[5])]
            if found:
                self.send(200, pod_object(found[0]))
            else:
                self.send(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
                                "code": 404, "message": f'pods "{parts[5]}" not found'})
        else:
            self.send(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404})


def main(kubeconfig: str, pods: str) -> None:
    Handler.pods = json.loads(pods)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(kubeconfig, "w") as out:
        out.write(KUBECONFIG.format(port=server.server_address[1]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    Handler.stop.set()
    server.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
