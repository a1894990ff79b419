"""A fake Kubernetes API server for the Kubernetes runner's tests.

No API server runs here. This one answers the calls the runner makes, the
way the real one does: create (201, or 409 AlreadyExists), read a Job's status
(the statuses a test queues, from ``recorded_k8s_job_status.json``: the
status objects of an Indexed Job's life as the batch/v1 API returns them),
delete (a foreground delete keeps the Job, marked for deletion, until the
test lets it go; then 404). It records every request so tests can check
what the ``kubernetes`` client sent.

It is strict where a real one is: every call is authorized against the Roles the rendered chart binds to
the caller's service account (by default the trainer's, ``llmsvc-trainer``), so a call the chart does not
grant (reading ``jobs/status``, say) fails the test with the API server's 403 instead of passing here and
failing in a cluster.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kubernetes import client

from tests.chart.rbac import ChartRBAC

RECORDED = json.loads((Path(__file__).with_name("recorded_k8s_job_status.json")).read_text())
"""Job ``status`` objects by phase, in the batch/v1 shapes newer API servers write: an interim condition
(``SuccessCriteriaMet``, ``FailureTarget``) comes before the terminal one (``Complete``, ``Failed``), so a
runner that reads only the first condition, or treats FailureTarget as the end, gets it wrong."""


@dataclass
class Request:
    method: str
    path: str
    body: dict | None


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


_RBAC: ChartRBAC | None = None


def chart_rbac() -> ChartRBAC:
    """The default chart's RBAC with the trainer on (rendered once per test session)."""
    global _RBAC
    if _RBAC is None:
        _RBAC = ChartRBAC()
    return _RBAC


class FakeKubernetesAPI:
    def __init__(self, service_account: str = "llmsvc-trainer") -> None:
        self.rbac = chart_rbac()
        self.service_account = service_account
        self.refused: list[Request] = []
        self.requests: list[Request] = []
        self.objects: dict[str, dict] = {}
        self.statuses: dict[str, list[dict]] = {}
        """Job name → statuses to answer in turn (the last one repeats)."""
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with api.lock:
                    request = Request(self.command, self.path, body)
                    api.requests.append(request)
                    refusal = api.rbac.check(self.headers.get("Authorization"), self.command, self.path)
                    if refusal is not None:
                        api.refused.append(request)
                        code, reply = refusal
                    else:
                        code, reply = api.answer(self.command, self.path.split("?")[0], body)
                self._reply(code, reply)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # -- the API's behaviour ----------------------------------------------------------------
    def answer(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if method == "POST":
            name = body["metadata"]["name"]
            key = f"{parts[-1]}/{name}"
            if key in self.objects:
                return 409, _status(409, "AlreadyExists", f'{parts[-1]} "{name}" already exists')
            created = {**body, "metadata": {**body["metadata"], "uid": f"uid-{len(self.objects)}",
                                            "resourceVersion": "1", "creationTimestamp": "2026-11-28T10:00:00Z"}}
            self.objects[key] = created
            return 201, created
        if parts[-1] == "status":
            parts = parts[:-1]
        kind, name = parts[-2], parts[-1]
        key = f"{kind}/{name}"
        if key not in self.objects:
            return 404, _status(404, "NotFound", f'{kind} "{name}" not found')
        if method == "DELETE":
            obj = self.objects[key]
            if kind == "jobs" and (body or {}).get("propagationPolicy") == "Foreground":
                obj["metadata"]["deletionTimestamp"] = "2026-11-28T10:05:00Z"
                obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                return 200, obj
            return 200, self.objects.pop(key)  # the API answers a delete with the deleted object
        statuses = self.statuses.get(name) or [RECORDED["running"]]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return 200, {**self.objects[key], "status": status}

    def finish_deletion(self, name: str) -> None:
        """The pods have exited: the foreground delete completes."""
        with self.lock:
            self.objects.pop(f"jobs/{name}", None)

    def api_client(self) -> client.ApiClient:
        """A client that authenticates as the fake's service account, as the pod's mounted token would."""
        cfg = client.Configuration(host=f"http://127.0.0.1:{self.server.server_address[1]}")
        cfg.api_key = {"authorization": self.rbac.token(self.service_account)}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path.split("?")[0]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
