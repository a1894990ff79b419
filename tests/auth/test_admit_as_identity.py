"""Admission as the key a signed identity names (``AdmitRequest.as_identity``): how a batch's lines are sent.

A real auth server, in this process, on PostgreSQL, with a deployment secret. A line is admitted for the
key that made the batch, with that key's scopes, model allow-list and limits, and is charged to it; a key
revoked since is refused as a bad key is; a key without the scope is a 403; an identity signed with another
secret, or no identity at all, is refused; and a deployment with no secret trusts no identity.
"""

from __future__ import annotations

from services.common.grpcutil import insecure_channel
from services.common.identity import Identity, IdentityCodec, service_token
from services.common.pb import auth_pb2 as pb
from services.common.pb import auth_pb2_grpc

from .conftest import auth_server, create_key

SECRET = "admit-as-identity-secret"


def _md(key_id: str, secret: str = SECRET):
    return IdentityCodec(secret).metadata(Identity(owner="team-a", key_id=key_id))


def _req(model: str = "m", scope: str = "chat") -> pb.AdmitRequest:
    return pb.AdmitRequest(request_id="batch_req_1", model=model, scope=scope, reserve_tokens=10, as_identity=True)


async def test_a_line_is_admitted_as_the_key_that_made_the_batch(tmp_path, auth_db, admin_secret, monkeypatch):
    monkeypatch.setenv("LLMSVC_INTERNAL_SECRET", SECRET)
    async with auth_server(tmp_path, auth_db, admin_secret) as auth:
        channel = insecure_channel(auth.address, token=service_token(SECRET))
        stub, admin = auth_pb2_grpc.AuthStub(channel), auth_pb2_grpc.AuthAdminStub(channel)
        try:
            key = (await create_key(admin, auth.admin_md, owner="team-a", allowed_models=["m"], rpm=2)).key
            train_only = (await create_key(admin, auth.admin_md, owner="team-a", scopes=["train"])).key

            ok = await stub.Admit(_req(), metadata=_md(key.id))
            assert ok.decision == pb.DECISION_ALLOWED and ok.key_id == key.id and ok.owner == "team-a"
            assert ok.reservation_id and ok.rate_limit.limit_requests == 2  # the key's own limits
            assert (await stub.Admit(_req(), metadata=_md(key.id))).decision == pb.DECISION_ALLOWED
            limited = await stub.Admit(_req(), metadata=_md(key.id))
            assert limited.decision == pb.DECISION_RATE_LIMITED and limited.code == "rate_limit_requests"

            other_model = await stub.Admit(_req(model="n"), metadata=_md(key.id))
            assert other_model.decision == pb.DECISION_FORBIDDEN and other_model.code == "model_not_allowed"
            no_scope = await stub.Admit(_req(), metadata=_md(train_only.id))
            assert no_scope.decision == pb.DECISION_FORBIDDEN and no_scope.code == "insufficient_scope"

            await admin.RevokeKey(pb.KeyRef(key_id=train_only.id), metadata=auth.admin_md)
            revoked = await stub.Admit(_req(scope="train"), metadata=_md(train_only.id))
            assert revoked.decision == pb.DECISION_UNAUTHENTICATED and revoked.code == "invalid_api_key"
            unknown = await stub.Admit(_req(), metadata=_md("no-such-key"))
            assert unknown.decision == pb.DECISION_UNAUTHENTICATED

            forged = await stub.Admit(_req(), metadata=_md(key.id, secret="another-secret")[:2]
                                      + ((("x-llmsvc-service-token", service_token(SECRET)),)))
            assert forged.decision == pb.DECISION_UNAUTHENTICATED and "secret" in forged.message
            bare = await stub.Admit(_req(), metadata=(("x-llmsvc-service-token", service_token(SECRET)),))
            assert bare.decision == pb.DECISION_UNAUTHENTICATED and "no identity" in bare.message
        finally:
            await channel.close()


async def test_without_a_secret_no_identity_is_trusted(tmp_path, auth_db, admin_secret, monkeypatch):
    monkeypatch.delenv("LLMSVC_INTERNAL_SECRET", raising=False)
    async with auth_server(tmp_path, auth_db, admin_secret) as auth:
        key = (await create_key(auth.admin, auth.admin_md, owner="team-a")).key
        resp = await auth.auth.Admit(_req(), metadata=_md(key.id))
        assert resp.decision == pb.DECISION_UNAUTHENTICATED and "LLMSVC_INTERNAL_SECRET" in resp.message
