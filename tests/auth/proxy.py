"""A TCP proxy the tests control, to cut Redis or PostgreSQL off from one auth replica.

``block()`` drops every open connection and then holds new ones open without
forwarding a byte (what a firewall DROP rule looks like to a client: connects
hang, nothing errors until a timeout). ``unblock()`` forwards again. The shared
Redis and PostgreSQL servers of this machine keep running for everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.blocked = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.blocked:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def block(self) -> None:
        self.blocked = True
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def unblock(self) -> None:
        self.blocked = False
        for w in list(self._held):
            w.close()
        self._held.clear()

    async def close(self) -> None:
        self.block()
        self.unblock()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
