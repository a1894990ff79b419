"""A local stack with every metrics port open, a real Prometheus scraping it, and traffic.

The stack is our own (not the session's ``stack``) because it needs metrics ports; it is the
same :class:`services.cli.stack.Stack` that ``llmsvc up`` runs. Prometheus is Debian's
``prometheus`` binary, started directly with a generated config and a temporary TSDB.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from services.cli.stack import Stack, StackConfig, free_port

SCRAPE_INTERVAL = "1s"


@pytest.fixture(scope="module")
def observed_stack(tmp_path_factory, default_model, api_key):
    home = tmp_path_factory.mktemp("dash-stack")
    # The trainer's store (<home>/models) holds the tiny model as a base to fine-tune.
    (home / "models").mkdir()
    (home / "models" / "tiny-random").symlink_to(default_model, target_is_directory=True)
    metrics = {name: free_port() for name in ("auth", "router", "worker0", "eval", "trainer")}
    # One request per worker at a time: concurrent requests queue in the router (its queue panels).
    cfg = StackConfig.ephemeral(home, default_model, api_key, metrics_ports=metrics,
                                extra_env={"LLMSVC_ROUTER_MAX_IN_FLIGHT_PER_WORKER": "1"})
    with Stack(cfg).running() as stack:
        stack.wait_for("/fine_tuning/jobs")
        yield stack


def scrape_targets(stack: Stack) -> dict[str, str]:
    """Prometheus job (the service) → host:port of its /metrics, for each process the stack runs."""
    c = stack.cfg
    targets = {}
    for proc in stack.procs:
        service = proc.rstrip("0123456789")
        if service == "gateway":
            targets[service] = f"{c.host}:{c.gateway_port}"  # the gateway serves /metrics itself
        else:
            targets[service] = f"{c.host}:{c.metrics_ports[proc]}"
    return targets


@pytest.fixture(scope="module")
def prometheus(observed_stack, tmp_path_factory):
    """Base URL of a real Prometheus scraping every service of ``observed_stack`` each second."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("Prometheus is not installed: apt-get install -y prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in scrape_targets(observed_stack).items()],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query, at ``at`` (Unix seconds) or now."""
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at else {})
    return _get(f"{prometheus}/api/v1/query", params)


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict]:
    """A range query at the scrape resolution: what a Grafana graph over [start, end] shows."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": SCRAPE_INTERVAL}
    return _get(f"{prometheus}/api/v1/query_range", params)


def _get(url: str, params: dict) -> list[dict]:
    body = httpx.get(url, params=params, timeout=30).json()
    assert body["status"] == "success", f"{params['query']}: {body.get('error')}"
    return body["data"]["result"]


def series(prometheus: str, metric: str) -> list[dict]:
    resp = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": metric}, timeout=10)
    return resp.json()["data"]

