"""The chart's RBAC as the API server applies it, for fake Kubernetes API servers in tests.

No API server can run on these machines, so the fakes the Kubernetes tests talk to must refuse what a real
one would: every call is authorized against the Roles the rendered chart binds to the caller's service
account (the bearer token names it), with the request attributes Kubernetes derives from the URL (verb,
API group, resource, subresource, namespace). An ungranted call gets the API server's 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .helpers import NAMESPACE, by_kind, manifests


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


def attributes(method: str, url: str) -> Attributes:
    """Kubernetes' request attributes of a resource request (``/api/v1/...`` or ``/apis/<group>/<v>/...``)."""
    split = urlsplit(url)
    parts = [p for p in split.path.strip("/").split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    watch = parse_qs(split.query).get("watch", ["false"])[0] in ("true", "1")
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if verb is None:
        verb = "watch" if watch else ("get" if name else "list")
    if method == "DELETE" and not name:
        verb = "deletecollection"
    return Attributes(verb, group, resource, subresource, namespace, name)


class ChartRBAC:
    """Service account → the rules of the Roles (namespace-scoped) the rendered chart binds to it."""

    def __init__(self, values: dict | None = None) -> None:
        docs = manifests(values)
        roles = {r["metadata"]["name"]: r.get("rules", []) for r in by_kind(docs, "Role")}
        self.rules: dict[str, list[dict]] = {}
        for b in by_kind(docs, "RoleBinding"):
            if b["roleRef"]["kind"] != "Role":
                continue
            for s in b.get("subjects", []):
                if s["kind"] == "ServiceAccount":
                    self.rules.setdefault(s["name"], []).extend(roles.get(b["roleRef"]["name"], []))
        assert not by_kind(docs, "ClusterRoleBinding"), "cluster-wide bindings: extend ChartRBAC before using it"

    def token(self, service_account: str) -> str:
        """The bearer token the fake servers take as that service account's."""
        return f"sa-token:{service_account}"

    def allows(self, service_account: str, a: Attributes) -> bool:
        if a.namespace != NAMESPACE:  # Roles grant nothing outside the release namespace
            return False
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        for rule in self.rules.get(service_account, []):
            if (a.group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", [])) \
                    and (resource in rule.get("resources", []) or "*" in rule.get("resources", [])) \
                    and (a.verb in rule.get("verbs", []) or "*" in rule.get("verbs", [])) \
                    and (not rule.get("resourceNames") or a.name in rule["resourceNames"]):
                return True
        return False

    def check(self, authorization: str | None, method: str, url: str) -> tuple[int, dict] | None:
        """None when the call is allowed; else the API server's 401 or 403 answer."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token.startswith("sa-token:"):
            return 401, _status(401, "Unauthorized", "Unauthorized")
        sa = token.removeprefix("sa-token:")
        a = attributes(method, url)
        if self.allows(sa, a):
            return None
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        kind = f"{a.resource}.{a.group}" if a.group else a.resource
        return 403, _status(403, "Forbidden",
                            f'{kind} "{a.name}" is forbidden: User "system:serviceaccount:{NAMESPACE}:{sa}" cannot '
                            f'{a.verb} resource "{resource}" in API group "{a.group}" in the namespace '
                            f'"{a.namespace}"')


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
