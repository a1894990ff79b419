"""The ``ResponseStore`` service: the Responses API's stored responses, on the shared database.

The gateway writes a response once it has ended (``store: true``) and reads it back for retrieve, delete,
``input_items`` and ``previous_response_id``; keeping it here, not in a gateway replica's memory, is what lets
a conversation continue on any replica. Each call's owner comes from its signed identity
(:mod:`services.common.identity`), never from the message: a response belongs to the owner of the key that
made it, and another owner's is NOT_FOUND, as one that does not exist (an admin key sees every owner's).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db.engine import session_factory
from services.common.db.response_tables import StoredResponse
from services.common.identity import Identity, IdentityCodec
from services.common.pb import responses_pb2 as pb
from services.common.pb import responses_pb2_grpc

log = logging.getLogger(__name__)
RESPONSES_SERVICE = "llmsvc.v1.ResponseStore"
MAX_ID = 64


class ResponseStoreServicer(responses_pb2_grpc.ResponseStoreServicer):
    def __init__(self, engine: AsyncEngine, timeout_s: float = 5.0, codec: IdentityCodec | None = None) -> None:
        self.sessions = session_factory(engine)
        self.timeout_s = timeout_s
        self.codec = codec or IdentityCodec()

    async def _db(self, context: grpc.aio.ServicerContext, fn):
        """Run ``fn(session)`` within the time limit; a database failure ends the call UNAVAILABLE."""
        async def body():
            async with self.sessions() as session:
                return await fn(session)

        try:
            return await asyncio.wait_for(body(), self.timeout_s)
        except IntegrityError:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "A response with this id is already stored.")
        except (TimeoutError, SQLAlchemyError, OSError) as exc:
            log.warning("response store: database unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "The response store's database is unavailable.")

    async def _visible(self, session, who: Identity, response_id: str) -> StoredResponse | None:
        row = await session.get(StoredResponse, response_id)
        return row if row is not None and who.may_see(row.owner) else None

    async def _not_found(self, context, response_id: str) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"No response found with id '{response_id}'.")

    async def PutResponse(self, request: pb.PutResponseRequest, context) -> pb.PutResponseReply:
        who = await self.codec.caller(context)
        r = request.response
        if not r.id or len(r.id) > MAX_ID:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"id must be 1-{MAX_ID} characters.")
        created = datetime.fromtimestamp(r.created_at, UTC) if r.created_at else datetime.now(UTC)

        async def put(session):
            session.add(StoredResponse(id=r.id, owner=who.owner, key_id=who.key_id, model=r.model,
                                       previous_response_id=r.previous_response_id, response=r.response_json,
                                       input_items=r.input_items_json or "[]", context=r.context_json or "[]",
                                       created_at=created))
            await session.commit()

        await self._db(context, put)
        return pb.PutResponseReply()

    async def GetResponse(self, request: pb.GetResponseRequest, context) -> pb.StoredResponse:
        who = await self.codec.caller(context)
        row = await self._db(context, lambda s: self._visible(s, who, request.id))
        if row is None:
            await self._not_found(context, request.id)
        out = pb.StoredResponse(id=row.id, model=row.model, previous_response_id=row.previous_response_id,
                                response_json=row.response, created_at=int(row.created_at.timestamp()),
                                owner=row.owner)
        if request.with_input_items:
            out.input_items_json = row.input_items
        if request.with_context:
            out.context_json = row.context
        return out

    async def DeleteResponse(self, request: pb.DeleteResponseRequest, context) -> pb.DeleteResponseReply:
        who = await self.codec.caller(context)

        async def drop(session) -> bool:
            row = await self._visible(session, who, request.id)
            if row is None:
                return False
            await session.execute(delete(StoredResponse).where(StoredResponse.id == row.id))
            await session.commit()
            return True

        if not await self._db(context, drop):
            await self._not_found(context, request.id)
        return pb.DeleteResponseReply(deleted=True)

