"""Alembic migrations of the dpx schema; ``dpx init`` applies them."""
