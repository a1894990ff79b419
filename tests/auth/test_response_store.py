"""The ResponseStore service (the Responses API's stored state) on PostgreSQL, called as the gateway calls it.

A real auth server, in this process, with a deployment secret: each call's owner comes from its signed
identity. Another owner's response is NOT_FOUND on every call and stays whole; an admin identity sees it; a
call with no identity, or one signed with another secret, is refused; an id is stored once.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from services.common.grpcutil import insecure_channel
from services.common.identity import Identity, IdentityCodec, service_token
from services.common.pb import responses_pb2 as pb
from services.common.pb import responses_pb2_grpc

from .conftest import auth_server

SECRET = "response-store-test-secret"


def _md(owner: str, admin: bool = False, secret: str = SECRET):
    return IdentityCodec(secret).metadata(Identity(owner=owner, key_id=f"key-{owner}", admin=admin))


def _response(rid: str) -> pb.StoredResponse:
    return pb.StoredResponse(id=rid, model="m", response_json=json.dumps({"id": rid, "output": []}),
                             input_items_json='[{"id": "msg_1"}]', context_json='[{"id": "msg_1"}, {"id": "x"}]',
                             created_at=int(time.time()))


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def test_owners_stay_apart_and_ids_are_stored_once(tmp_path, auth_db, admin_secret, monkeypatch):
    monkeypatch.setenv("LLMSVC_INTERNAL_SECRET", SECRET)
    async with auth_server(tmp_path, auth_db, admin_secret) as auth:
        channel = insecure_channel(auth.address, token=service_token(SECRET))
        store = responses_pb2_grpc.ResponseStoreStub(channel)
        try:
            rid = f"resp_{time.time_ns()}"
            await store.PutResponse(pb.PutResponseRequest(response=_response(rid)), metadata=_md("team-a"))
            assert await _code(store.PutResponse(pb.PutResponseRequest(response=_response(rid)),
                                                 metadata=_md("team-a"))) == grpc.StatusCode.ALREADY_EXISTS

            got = await store.GetResponse(pb.GetResponseRequest(id=rid), metadata=_md("team-a"))
            assert got.owner == "team-a" and json.loads(got.response_json)["id"] == rid
            assert got.input_items_json == got.context_json == ""  # read only when asked for
            full = await store.GetResponse(pb.GetResponseRequest(id=rid, with_input_items=True, with_context=True),
                                           metadata=_md("team-a"))
            assert json.loads(full.context_json)[-1] == {"id": "x"} and json.loads(full.input_items_json)

            for call in (store.GetResponse(pb.GetResponseRequest(id=rid), metadata=_md("team-b")),
                         store.DeleteResponse(pb.DeleteResponseRequest(id=rid), metadata=_md("team-b"))):
                assert await _code(call) == grpc.StatusCode.NOT_FOUND
            assert (await store.GetResponse(pb.GetResponseRequest(id=rid), metadata=_md("root", admin=True))).id == rid

            for md in ((), _md("team-a", secret="another-secret")):
                assert await _code(store.GetResponse(pb.GetResponseRequest(id=rid), metadata=md)) \
                    == grpc.StatusCode.UNAUTHENTICATED

            assert (await store.DeleteResponse(pb.DeleteResponseRequest(id=rid), metadata=_md("team-a"))).deleted
            assert await _code(store.GetResponse(pb.GetResponseRequest(id=rid), metadata=_md("team-a"))) \
                == grpc.StatusCode.NOT_FOUND
            assert await _code(store.PutResponse(pb.PutResponseRequest(response=_response("")),
                                                 metadata=_md("team-a"))) == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await channel.close()
