"""Imports every domain's tables so that metadata and Alembic see them all."""

from opensci.accounts import models as accounts_models
from opensci.compute import models as compute_models
from opensci.repos import models as repos_models
from opensci.storage import models as storage_models

__all__ = ["accounts_models", "compute_models", "repos_models", "storage_models"]
