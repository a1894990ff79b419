"""Stored responses of the Responses API (``store: true``), owned like every other object.

The JSON documents are kept as the gateway wrote them (text): the store never reads inside them. ``context``
is denormalised on purpose: it holds the whole conversation a continuation starts from, so continuing a chain
is one read however long the chain is, and deleting an earlier response does not break the later ones.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow


class StoredResponse(Base):
    __tablename__ = "stored_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    """The owner (team) of the key that made it; another owner's keys get 404."""
    key_id: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(256), default="")
    previous_response_id: Mapped[str] = mapped_column(String(64), default="")
    response: Mapped[str] = mapped_column(Text)
    """The response object as the API returned it (JSON)."""
    input_items: Mapped[str] = mapped_column(Text)
    """This response's own input items, with their ids (JSON array)."""
    context: Mapped[str] = mapped_column(Text)
    """The items a continuation starts from: earlier items of the chain, this input, this output (JSON array)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
