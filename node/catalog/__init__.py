"""The catalog: which sessions and objects exist, behind one interface.

`records` holds what the catalog stores (and the pure rules every backend shares); each
backend module stores it: `sqlite` (the embedded default: `catalog.db` in the data directory,
one node) and `postgres` (`--catalog postgresql://...`: several nodes sharing one namespace).
The node's logic (node.store) talks to a catalog only through the methods both backends offer
(see `sqlite.Catalog` for what each one promises), and to a backend through:

    name, shares_data_dir     "sqlite" / "postgresql"; may several nodes use one data dir
    describe()                where it is, for messages (no password)
    inspect()                 (CatalogState, detail), changing nothing
    prepare()                 create or upgrade the schema (safe to run again, and at once)
    catalog_id()              the identity the data directory remembers (node.datadir)
    pool()                    per process: `.get()` a catalog for this thread, `.close()`
"""

from __future__ import annotations

from node.catalog.records import (OBJECT_COLUMNS, SESSION_COLUMNS, CatalogState, FileRef,
                                  ObjectRecord, SessionRecord, prefix_upper_bound)
from node.catalog.sqlite import FILE_NAME, Catalog, CatalogPool, SqliteBackend, inspect_catalog

#: URL schemes that select the PostgreSQL backend.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def open_backend(settings):
    """The catalog backend the settings choose: `catalog` empty = SQLite in the data dir."""
    if settings.catalog and is_postgres_url(settings.catalog):
        from node.catalog.postgres import PostgresBackend

        return PostgresBackend(settings.catalog, max_connections=settings.io_threads + 2,
                               timeout=settings.catalog_timeout)
    return SqliteBackend(settings.data_dir)


__all__ = ["OBJECT_COLUMNS", "SESSION_COLUMNS", "CatalogState", "FileRef", "ObjectRecord",
           "SessionRecord", "prefix_upper_bound", "FILE_NAME", "Catalog", "CatalogPool",
           "SqliteBackend", "inspect_catalog", "open_backend", "is_postgres_url"]
