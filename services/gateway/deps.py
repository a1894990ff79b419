"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .admission import Admission, admit
from .config import GatewaySettings
from .upstream import Upstreams


# ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hand-off per request each.
async def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


async def _upstreams(request: Request) -> Upstreams:
    return request.app.state.upstreams


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
UpstreamsDep = Annotated[Upstreams, Depends(_upstreams)]


def _admitted(scope: str):
    async def admitted(request: Request) -> Admission:
        settings: GatewaySettings = request.app.state.settings
        return await admit(request.app.state.upstreams, request, model="", scope=scope, reserve_tokens=0,
                           timeout_s=settings.auth_timeout_s)

    admitted.__name__ = f"admitted_{scope}"
    return admitted


# The authenticated caller of a route, admitted with the route's scope: its key, owner and signed identity
# (``Admission.metadata``), which every call the route makes to the trainer or eval service carries.
ChatCaller = Annotated[Admission, Depends(_admitted("chat"))]
TrainCaller = Annotated[Admission, Depends(_admitted("train"))]
EvalCaller = Annotated[Admission, Depends(_admitted("eval"))]
