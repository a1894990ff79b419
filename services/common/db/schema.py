"""Imports every table module so ``Base.metadata`` holds the whole schema (for Alembic)."""

from . import auth_tables, batch_tables, eval_tables, job_tables, registry, response_tables  # noqa: F401
from .base import Base

metadata = Base.metadata
