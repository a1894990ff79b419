"""Discovery: the EndpointSlice watcher and the DNS fallback.

No Kubernetes API server runs here, so the EndpointSlice test points the real
``kubernetes`` client at a fake API server: a small HTTP server that answers the
list call and streams watch events that the test feeds it (the JSON shapes are
those of ``discovery.k8s.io/v1``). Everything on the client side is the real
code path that runs in a cluster.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client

from services.router.config import RouterSettings
from services.router.discovery import watch_dns, watch_kubernetes
from services.router.pool import WorkerPool

from .conftest import until


def endpoint_slice(name: str, ready: dict[str, bool], port: int = 50060) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "workers"}},
        "ports": [{"name": "metrics", "port": 9000, "protocol": "TCP"},
                  {"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": r}} for ip, r in ready.items()],
    }


class FakeAPI:
    """Answers GET .../namespaces/llmsvc/endpointslices (list, and ?watch=true streams queued events).

    As strict as a real API server: each call is authorized against the Roles the rendered chart binds to
    the router's service account (``tests.chart.rbac``); an ungranted one gets the server's 403."""

    def __init__(self, slices: list[dict]) -> None:
        from tests.chart.rbac import ChartRBAC

        self.rbac = ChartRBAC()
        self.refused: list[str] = []
        self.slices = slices
        self.events: queue.Queue = queue.Queue()
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                api.requests.append(self.path)
                refusal = api.rbac.check(self.headers.get("Authorization"), "GET", self.path)
                if refusal is not None:
                    api.refused.append(self.path)
                    body = json.dumps(refusal[1]).encode()
                    self.send_response(refusal[0])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                assert self.path.startswith("/apis/discovery.k8s.io/v1/namespaces/llmsvc/endpointslices")
                assert "labelSelector=kubernetes.io/service-name%3Dworkers" in self.path
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if "watch=true" not in self.path:
                    body = json.dumps({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                       "metadata": {"resourceVersion": "100"}, "items": api.slices}).encode()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                # A watch is a chunked stream of JSON lines, one event each.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while (event := api.events.get()) is not None:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if event["type"] == "ERROR":
                        break
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self) -> client.DiscoveryV1Api:
        """Authenticated as the router's service account, as its pod's mounted token would be."""
        cfg = client.Configuration(host=f"http://127.0.0.1:{self.server.server_address[1]}")
        cfg.api_key = {"authorization": self.rbac.token("llmsvc-router")}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.DiscoveryV1Api(client.ApiClient(cfg))

    def close(self) -> None:
        self.events.put(None)
        self.server.shutdown()


async def test_endpointslice_watch_tracks_ready_endpoints():
    api = FakeAPI([endpoint_slice("workers-a", {"10.0.0.1": True, "10.0.0.2": False})])
    pool = WorkerPool([])
    settings = RouterSettings(discovery="kubernetes", k8s_namespace="llmsvc", k8s_service="workers")
    task = asyncio.create_task(watch_kubernetes(pool, settings, api=api.client()))
    try:
        await until(lambda: set(pool.workers) == {"10.0.0.1:50060"})
        # An expired watch (410 Gone) makes the watcher list again, then watch from the new version.
        api.slices.append(endpoint_slice("workers-b", {"10.0.0.3": True}))
        api.events.put({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                                    "status": "Failure", "reason": "Expired", "code": 410,
                                                    "message": "too old resource version: 1 (100)"}})
        await until(lambda: set(pool.workers) == {"10.0.0.1:50060", "10.0.0.3:50060"})
        api.events.put({"type": "MODIFIED",
                        "object": endpoint_slice("workers-a", {"10.0.0.1": False, "10.0.0.2": True})})
        await until(lambda: set(pool.workers) == {"10.0.0.2:50060", "10.0.0.3:50060"})
        api.events.put({"type": "DELETED", "object": endpoint_slice("workers-b", {})})
        await until(lambda: set(pool.workers) == {"10.0.0.2:50060"})
        assert sum("watch=true" in r for r in api.requests) == 2
        assert not api.refused
    finally:
        task.cancel()
        api.close()
        await pool.close()


async def test_unusable_kubernetes_api_falls_back_to_dns():
    class Forbidden:
        def list_namespaced_endpoint_slice(self, *a, **kw):
            raise client.exceptions.ApiException(status=403, reason="Forbidden")

    pool = WorkerPool([])
    settings = RouterSettings(discovery="kubernetes", k8s_namespace="ns", dns_name="localhost:50099",
                              dns_interval_s=0.1)
    task = asyncio.create_task(watch_kubernetes(pool, settings, api=Forbidden()))
    try:
        await until(lambda: "127.0.0.1:50099" in pool.workers)
    finally:
        task.cancel()
        await pool.close()


async def test_dns_keeps_the_last_set_when_resolution_fails():
    pool = WorkerPool([])
    task = asyncio.create_task(watch_dns(pool, "localhost:50098", 0.05))
    await until(lambda: "127.0.0.1:50098" in pool.workers)
    task.cancel()
    bad = asyncio.create_task(watch_dns(pool, "no-such-host.invalid:1", 0.05))
    await asyncio.sleep(0.2)
    bad.cancel()
    assert "127.0.0.1:50098" in pool.workers
    await pool.close()
