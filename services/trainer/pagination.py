"""Cursor conditions for lists ordered by (created_at, id): the ``after=<id>`` of OpenAI's lists."""

from __future__ import annotations

from sqlalchemy import and_, or_


def older_than(created, ident, cursor):
    """Rows that come after ``cursor`` in newest-first order."""
    return or_(created < cursor.created_at, and_(created == cursor.created_at, ident < cursor.id))


def newer_than(created, ident, cursor):
    """Rows that come after ``cursor`` in oldest-first order."""
    return or_(created > cursor.created_at, and_(created == cursor.created_at, ident > cursor.id))
