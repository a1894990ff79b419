"""Who a call is made for, carried from the gateway to the services behind it in signed call metadata; and
the token that makes a call an internal one at all.

The gateway learns the caller's identity from auth (``Admit``: key id, owner, scopes) and sends it on every
call it makes for the request as two metadata entries: the identity and an HMAC-SHA256 of it under the
deployment's internal secret (``LLMSVC_INTERNAL_SECRET``, made by ``llmsvc up`` and by the chart). A service
acts only on an identity whose signature checks out and that has not expired; it never trusts an owner or an
admin flag that a caller writes into a message. A pod that can open the trainer's port but does not hold the
secret cannot claim to be anyone.

Without a secret configured (a service started by hand, in-process tests) calls carry no identity and a
service treats them as the operator's own: it says so at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)

IDENTITY_KEY = "x-llmsvc-identity"
SIGNATURE_KEY = "x-llmsvc-identity-sig"
SERVICE_TOKEN_KEY = "x-llmsvc-service-token"
# The batch line (``<batch id>:<line>``) a request sent by the batch runner answers; honoured with a signed
# identity only (services/gateway/batch_lines.py).
BATCH_LINE_KEY = "x-llmsvc-batch-line"
SECRET_ENV = "LLMSVC_INTERNAL_SECRET"
TTL_S = 3600.0


def service_token(secret: str | None = None) -> str:
    """The token every internal gRPC call carries (``services.common.grpcutil`` adds it to each call on our
    channels and refuses calls without it): derived from the internal secret, so only the deployment's
    services hold it. Empty without a secret."""
    raw = os.environ.get(SECRET_ENV, "") if secret is None else secret
    return hmac.new(raw.encode(), b"llmsvc internal call v1", hashlib.sha256).hexdigest() if raw else ""


@dataclass(frozen=True, slots=True)
class Identity:
    """The owner (team) everything made by the call belongs to, the key that made it, and whether the key
    is an ``admin`` key, which sees every owner's objects."""

    owner: str
    key_id: str = ""
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.owner

    def owner_filter(self) -> str | None:
        """The owner to list for, or None for every owner (admin)."""
        return None if self.admin else self.owner


# The identity of a call in a deployment without an internal secret: the operator's own.
OPERATOR = Identity(owner="", admin=True)


class InvalidIdentity(Exception):
    pass


def _sign(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


class IdentityCodec:
    def __init__(self, secret: str | None = None) -> None:
        raw = os.environ.get(SECRET_ENV, "") if secret is None else secret
        self._secret = raw.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._secret)

    def metadata(self, identity: Identity, now: float | None = None) -> tuple[tuple[str, str], ...]:
        """Outgoing metadata for a call made for ``identity`` (empty without a secret)."""
        if not self._secret:
            return ()
        doc = {"o": identity.owner, "k": identity.key_id, "a": identity.admin,
               "e": int((now or time.time()) + TTL_S)}
        payload = base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
        return ((IDENTITY_KEY, payload), (SIGNATURE_KEY, _sign(self._secret, payload.encode())),
                (SERVICE_TOKEN_KEY, service_token(self._secret.decode())))

    def verify(self, metadata, now: float | None = None) -> Identity:
        """The identity a call's metadata carries; :class:`InvalidIdentity` when it is missing, forged or
        expired. Without a secret: :data:`OPERATOR`."""
        if not self._secret:
            return OPERATOR
        md = {k: v for k, v in (metadata or ())}
        payload, sig = md.get(IDENTITY_KEY), md.get(SIGNATURE_KEY)
        if not payload or not sig:
            raise InvalidIdentity("the call carries no identity")
        if not hmac.compare_digest(sig, _sign(self._secret, payload.encode())):
            raise InvalidIdentity("the call's identity is not signed with this deployment's internal secret")
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload.encode()))
            identity = Identity(owner=str(doc["o"]), key_id=str(doc["k"]), admin=bool(doc["a"]))
            expires = float(doc["e"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidIdentity("the call's identity is malformed") from exc
        if expires < (now or time.time()):
            raise InvalidIdentity("the call's identity has expired")
        return identity

    async def caller(self, context: grpc.aio.ServicerContext) -> Identity:
        """The verified identity of an incoming call, or the call ends UNAUTHENTICATED."""
        try:
            return self.verify(context.invocation_metadata())
        except InvalidIdentity as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"Refused: {exc}.")
            raise  # abort raises; this is for type checkers

    def warn_if_open(self, service: str) -> None:
        if not self._secret:
            log.warning("%s is not set: %s trusts every caller as the operator (every owner's objects). "
                        "Set it to the same secret in every service, as llmsvc up and the chart do.",
                        SECRET_ENV, service)
