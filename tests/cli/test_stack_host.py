"""``llmsvc up --host 0.0.0.0`` exposes the gateway and nothing else: auth, router, workers, trainer and eval
listen on loopback whatever the gateway's address is. Read back from the listening sockets of real processes."""

from __future__ import annotations

import ipaddress

import psutil

from services.cli.stack import Stack, StackConfig
from services.common.db.migrate import upgrade


def _listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # gRPC listens on 127.0.0.1 through an IPv6 socket
    return (mapped or addr).is_loopback


def test_only_the_gateway_listens_beyond_loopback(tmp_path, default_model, api_key):
    from services.cli.stack import free_port

    cfg = StackConfig.ephemeral(tmp_path, default_model, api_key, host="0.0.0.0",
                                metrics_ports={"auth": free_port(), "trainer": free_port()})
    assert cfg.internal_host == "127.0.0.1" and cfg.base_url.startswith("http://127.0.0.1:")
    for service in ("auth", "router", "worker", "trainer", "eval"):
        env = Stack(cfg).env_for(service)
        assert env[f"LLMSVC_{service.upper()}_HOST"] == "127.0.0.1", service
    stack = Stack(cfg)
    upgrade(cfg.db_url)
    for name in ("auth", "trainer", "gateway"):
        stack.spawn(name, f"services.{name}.main", stack.env_for(name))
    try:
        stack.wait_for("/fine_tuning/jobs")
        assert _listening(stack.procs["gateway"].popen.pid) == {"0.0.0.0"}
        for name in ("auth", "trainer"):
            addresses = _listening(stack.procs[name].popen.pid)
            assert len(addresses) >= 1 and all(_loopback(a) for a in addresses), (name, addresses)
    finally:
        stack.stop()


def test_a_loopback_host_is_kept_for_every_service():
    cfg = StackConfig(home=None, model=None, api_key="k", host="127.0.0.1")
    assert cfg.internal_host == "127.0.0.1"
    assert StackConfig(home=None, model=None, api_key="k", host="10.1.2.3").internal_host == "127.0.0.1"
