"""The catalog: which sessions and objects exist, behind one interface.

`records` holds what the catalog stores (and the pure rules every backend shares); each
backend module stores it: `sqlite` (the embedded default: one file in the data directory, one
node). The node's logic (node.store) only ever talks to a catalog through the methods a backend
offers; see `sqlite.Catalog` for what each one promises.
"""

from node.catalog.records import (OBJECT_COLUMNS, SESSION_COLUMNS, CatalogState, FileRef,
                                  ObjectRecord, SessionRecord, prefix_upper_bound)
from node.catalog.sqlite import FILE_NAME, Catalog, CatalogPool, inspect_catalog

__all__ = ["OBJECT_COLUMNS", "SESSION_COLUMNS", "CatalogState", "FileRef", "ObjectRecord",
           "SessionRecord", "prefix_upper_bound", "FILE_NAME", "Catalog", "CatalogPool",
           "inspect_catalog"]
