"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .config import GatewaySettings
from .upstream import Upstreams


# ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hand-off per request each.
async def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


async def _upstreams(request: Request) -> Upstreams:
    return request.app.state.upstreams


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
UpstreamsDep = Annotated[Upstreams, Depends(_upstreams)]
