"""The predictions table, its one record builder and its store (SQLite or PostgreSQL)."""
