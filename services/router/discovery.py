"""Worker discovery: a static list, Kubernetes EndpointSlices, or DNS of a headless Service.

Each source calls ``pool.sync(addresses)`` with the full current set. The
EndpointSlice watcher uses the official ``kubernetes`` client, which is
synchronous, in a thread; events go back to the event loop with
``call_soon_threadsafe``. When the API cannot be used (no in-cluster config,
no RBAC to list EndpointSlices) it falls back to DNS of the headless Service,
which lists ready pods only as well.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

from .config import RouterSettings
from .pool import WorkerPool

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_addresses(endpoint_slice, port_name: str) -> set[str]:
    """``host:port`` of the ready endpoints of one EndpointSlice (a client model object)."""
    ports = endpoint_slice.ports or []
    port = next((p.port for p in ports if p.name == port_name), ports[0].port if ports else None)
    if port is None:
        return set()
    out = set()
    for ep in endpoint_slice.endpoints or []:
        cond = ep.conditions
        # ready is nil-means-true; a terminating pod turns ready false, so its new requests stop here.
        if cond is not None and cond.ready is False:
            continue
        for ip in ep.addresses or []:
            out.add(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return out


class EndpointSliceWatcher:
    """List then watch the EndpointSlices of one Service; re-list when the watch expires (410 Gone)."""

    def __init__(self, api, namespace: str, service: str, port_name: str,
                 publish: Callable[[set[str]], None]) -> None:
        self.api = api  # kubernetes.client.DiscoveryV1Api
        self.namespace, self.service, self.port_name = namespace, service, port_name
        self.publish = publish
        self.slices: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._watch = None

    def _current(self) -> set[str]:
        return set().union(*self.slices.values()) if self.slices else set()

    def _list(self) -> str:
        resp = self.api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"{SERVICE_NAME_LABEL}={self.service}")
        self.slices = {s.metadata.name: slice_addresses(s, self.port_name) for s in resp.items}
        self.publish(self._current())
        return resp.metadata.resource_version

    def apply(self, event_type: str, endpoint_slice) -> None:
        name = endpoint_slice.metadata.name
        if event_type == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = slice_addresses(endpoint_slice, self.port_name)
        self.publish(self._current())

    def run(self) -> None:
        """Blocking: list, watch, repeat until :meth:`stop`. API errors other than 410 propagate."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            version = self._list()
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                        self.api.list_namespaced_endpoint_slice, self.namespace,
                        label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
                        resource_version=version, timeout_seconds=300):
                    if self._stop.is_set():
                        break
                    self.apply(event["type"], event["object"])
            except ApiException as exc:
                if exc.status != 410:
                    raise
                log.info("EndpointSlice watch expired; re-listing")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()


async def watch_dns(pool: WorkerPool, target: str, interval_s: float) -> None:
    """Resolve ``host:port`` of a headless Service every ``interval_s``; every A/AAAA record is a worker."""
    host, _, port = target.rpartition(":")
    loop = asyncio.get_running_loop()
    while True:
        try:
            infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            found = {f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos}
            pool.sync(found)
        except OSError as exc:
            # Keep the last known set: a DNS hiccup must not empty the pool.
            log.warning("resolving %s failed: %s", target, exc)
        await asyncio.sleep(interval_s)


def _kubernetes_api():
    from kubernetes import client, config

    config.load_incluster_config()
    return client.DiscoveryV1Api()


def _own_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return "default"


async def _in_daemon_thread(fn: Callable[[], None]) -> None:
    """Run blocking ``fn`` in a daemon thread (a watch blocks for minutes; it must not hold up exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            done.set_exception(exc) if exc else done.set_result(None)

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=target, name="endpointslice-watch", daemon=True).start()
    await done


async def watch_kubernetes(pool: WorkerPool, settings: RouterSettings, api=None) -> None:
    """Watch EndpointSlices in a thread; on an unusable API fall back to DNS of the headless Service."""
    namespace = settings.k8s_namespace or _own_namespace()
    loop = asyncio.get_running_loop()
    try:
        api = api or _kubernetes_api()
        watcher = EndpointSliceWatcher(api, namespace, settings.k8s_service, settings.k8s_port_name,
                                       lambda addrs: loop.call_soon_threadsafe(pool.sync, addrs))
        try:
            await _in_daemon_thread(watcher.run)
        finally:
            watcher.stop()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # ConfigException, ApiException 401/403, connection errors
        target = settings.dns_name or f"{settings.k8s_service}.{namespace}.svc:50060"
        log.warning("EndpointSlice discovery unavailable (%s); falling back to DNS of %s", exc, target)
        await watch_dns(pool, target, settings.dns_interval_s)


def start_discovery(pool: WorkerPool, settings: RouterSettings) -> asyncio.Task | None:
    """Start the configured source; the static list needs no task (the pool was built with it)."""
    if settings.discovery == "kubernetes":
        return asyncio.create_task(watch_kubernetes(pool, settings))
    if settings.discovery == "dns":
        if not settings.dns_name:
            raise ValueError("LLMSVC_ROUTER_DNS_NAME (host:port) is required for dns discovery")
        return asyncio.create_task(watch_dns(pool, settings.dns_name, settings.dns_interval_s))
    return None
