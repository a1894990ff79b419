"""The shared database: SQLAlchemy 2 async models, engine factory and Alembic migrations.

One schema and one migration history for every service. PostgreSQL through
asyncpg in a cluster; a SQLite file through aiosqlite as the embedded default.
"""
