from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import opensci.models  # noqa: F401  (registers every domain's tables)
from opensci.db.base import Base

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
