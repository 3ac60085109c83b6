"""The catalog interface, the same tests on both backends (SQLite in a temp data dir, and a real
PostgreSQL database of its own): what node.store relies on, method by method."""

from __future__ import annotations

import threading

import pytest

from node.catalog import ObjectRecord, SessionRecord, open_backend
from node.config import Settings
from node.errors import CatalogUnavailable, GenerationMismatch, ObjectExists, TooManySessions
from node.session_rules import State, check_preconditions

BOTH_CATALOGS = True


@pytest.fixture
def backend(catalog_backend, tmp_path, request):
    url = ""
    if catalog_backend == "postgresql":
        url = request.getfixturevalue("postgres_server").new_database()
    backend = open_backend(Settings(catalog=url, data_dir=str(tmp_path), io_threads=4))
    backend.prepare()
    return backend


@pytest.fixture
def pool(backend):
    """Per process; `get()` gives the calling thread its catalog (SQLite: one connection each)."""
    pool = backend.pool()
    yield pool
    pool.close()


@pytest.fixture
def catalog(pool):
    return pool.get()


def session(upload_id: str, object_id: str = "obj", client: str = "c", **kw) -> SessionRecord:
    values = dict(upload_id=upload_id, object_id=object_id, file_name="f.bin", file_size=10,
                  chunk_size=4096, uploaded_offset=0, sha256="", state=State.ACTIVE,
                  content_type="", metadata={"k": "v"}, if_absent=False, if_generation_match="",
                  client=client, created_at_ms=1, updated_at_ms=1, expires_at_ms=1000)
    values.update(kw)
    return SessionRecord(**values)


def in_threads(target, args) -> None:
    """target(arg) for every arg, each in a thread of its own, all at once; wait for all."""
    threads = [threading.Thread(target=target, args=(arg,)) for arg in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def version(object_id: str, generation: str) -> ObjectRecord:
    return ObjectRecord(object_id=object_id, generation=generation, file_name="f.bin", size=10,
                        sha256="ab" * 32, content_type="text/plain", metadata={"m": "1"},
                        created_at_ms=5, disk_name=f"{object_id}_f_{generation}.bin")


def test_catalog_timeout_is_how_long_a_postgres_call_waits_for_a_connection():
    # Nothing listens on port 1: every connection attempt is refused.
    settings = Settings(catalog="postgresql://nobody@127.0.0.1:1/none", catalog_timeout=0.3)
    pool = open_backend(settings).pool()
    try:
        catalog = pool.get()
        assert catalog.pool.timeout == 0.3
        with pytest.raises(CatalogUnavailable):
            catalog.get_object("x")
    finally:
        pool.close()


def test_prepare_twice_keeps_the_identity_and_the_secret(backend, catalog):
    first = (backend.catalog_id(), catalog.page_token_secret())
    backend.prepare()
    assert (backend.catalog_id(), catalog.page_token_secret()) == first
    assert len(first[1]) == 32


def test_a_session_round_trips_and_checkpoints_only_while_active(catalog):
    rec = session("u1", metadata={"é": "ü"})
    catalog.insert_session(rec)
    assert catalog.get_session("u1") == rec
    assert catalog.checkpoint("u1", 4, "aa" * 32, 2, 2000)
    got = catalog.get_session("u1")
    assert (got.uploaded_offset, got.sha256, got.expires_at_ms) == (4, "aa" * 32, 2000)
    assert catalog.end_session("u1", State.ABORTED, 3, 3000, free=[("parts", "p.u1")])
    assert not catalog.end_session("u1", State.ABORTED, 3, 3000)  # not ACTIVE any more
    assert not catalog.checkpoint("u1", 8, "", 4, 4000)
    assert catalog.get_session("u1").state is State.ABORTED
    assert catalog.garbage(10_000) == [("parts", "p.u1")]
    catalog.forget_garbage([("parts", "p.u1")])
    assert catalog.garbage(10_000) == []
    assert catalog.get_session("nope") is None


def test_session_caps_never_overshoot_under_concurrent_inserts(pool, catalog):
    errors: list[Exception] = []

    def insert(i: int) -> None:
        try:
            pool.get().insert_session(session(f"cap{i:02d}", client=f"c{i % 2}"), max_active=7)
        except TooManySessions as exc:
            errors.append(exc)
    in_threads(insert, range(20))
    assert catalog.count_active() == 7 and len(errors) == 13
    with pytest.raises(TooManySessions):
        catalog.insert_session(session("percl", client="c0"), max_per_client=catalog.count_active("c0"))


def test_listings_sort_by_code_point_and_page_after_a_key(catalog):
    ids = ["a", "a-1", "a.2", "a_3", "aB", "ab", "b", "Z"]
    for i, object_id in enumerate(ids):
        catalog.insert_session(session(f"s{i}", object_id=object_id))
    listed = [r.object_id for r in catalog.list_active_sessions("", None, -1)]
    assert listed == sorted(ids)  # Python sorts by code point, like SQLite and "C" collation
    assert [r.object_id for r in catalog.list_active_sessions("a", None, -1)] == \
        sorted(i for i in ids if i.startswith("a"))
    after = catalog.list_active_sessions("a", ("a-1", "s1"), 2)
    assert [r.object_id for r in after] == ["a.2", "aB"]


def test_commit_is_conditional_and_swaps_the_current_version(catalog):
    published: list[str] = []
    for upload_id in ("g1", "g2", "g3"):
        catalog.insert_session(session(upload_id, object_id="doc"))

    def check(expect_absent: bool, match: str = ""):
        return lambda current: check_preconditions(current.generation if current else None,
                                                   expect_absent, match)
    assert catalog.commit_object("g1", version("doc", "g1"), 10, 99, check(True),
                                 lambda o: published.append(o.generation)) is None
    with pytest.raises(ObjectExists):
        catalog.commit_object("g2", version("doc", "g2"), 11, 99, check(True), published.append)
    with pytest.raises(GenerationMismatch):
        catalog.commit_object("g2", version("doc", "g2"), 11, 99, check(False, "zz"), published.append)
    replaced = catalog.commit_object("g3", version("doc", "g3"), 12, 99, check(False, "g1"),
                                     lambda o: published.append(o.generation))
    assert replaced == version("doc", "g1") and published == ["g1", "g3"]
    assert catalog.get_object("doc") == version("doc", "g3")
    assert catalog.get_session("g3").state is State.COMMITTED
    assert catalog.get_session("g3").object == version("doc", "g3")
    assert catalog.get_session("g2").state is State.ACTIVE  # a failed check changed nothing
    assert ("objects", version("doc", "g1").disk_name) in catalog.garbage(10_000)


def test_concurrent_if_absent_commits_of_one_object_let_exactly_one_win(pool, catalog):
    outcomes: list[str] = []
    for i in range(6):
        catalog.insert_session(session(f"race{i}", object_id="contended"))

    def commit(i: int) -> None:
        try:
            pool.get().commit_object(f"race{i}", version("contended", f"race{i}"), 1, 99,
                                  lambda cur: check_preconditions(cur.generation if cur else None, True, ""),
                                  lambda o: None)
            outcomes.append("won")
        except ObjectExists:
            outcomes.append("lost")
    in_threads(commit, range(6))
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]


def test_delete_records_garbage_and_with_object_sees_the_current_row(catalog):
    catalog.insert_session(session("d1", object_id="gone"))
    catalog.commit_object("d1", version("gone", "d1"), 1, 99, lambda cur: None, lambda o: None)
    assert catalog.with_object("gone", lambda cur: cur.generation) == "d1"
    removed = catalog.delete_object("gone", lambda cur: None, lambda o: None, 7)
    assert removed.generation == "d1" and catalog.get_object("gone") is None
    assert catalog.with_object("gone", lambda cur: cur) is None
    assert ("objects", removed.disk_name) in catalog.garbage(10_000)


def test_writes_at_the_same_moment_fail_alone_and_the_rest_commit(pool, catalog):
    """SQLite commits the writes that wait together in one transaction, each in a savepoint:
    one that fails (here a duplicate upload id) must take nothing else down with it."""
    catalog.insert_session(session("taken"))
    failed: list[str] = []
    start = threading.Barrier(24)

    def insert(i: int) -> None:
        upload_id = "taken" if i % 4 == 0 else f"batch{i:02d}"
        start.wait()
        try:
            pool.get().insert_session(session(upload_id, object_id=f"o{i}"))
        except Exception:  # the backend's own unique-violation error
            failed.append(upload_id)
    in_threads(insert, range(24))
    assert failed == ["taken"] * 6
    assert {s.upload_id for s in catalog.sessions_in_state(State.ACTIVE)} == \
        {"taken"} | {f"batch{i:02d}" for i in range(24) if i % 4}
    assert catalog.get_session("taken").object_id == "obj"  # the first one's row, untouched


@pytest.mark.timeout(30)
def test_a_write_made_inside_with_object_joins_it(catalog):
    """Recovery forgets a lost object's row from inside the transaction that holds the object:
    on SQLite that once failed ("cannot start a transaction within a transaction"), and must
    never wait for itself."""
    catalog.insert_session(session("w1", object_id="lost"))
    catalog.commit_object("w1", version("lost", "w1"), 1, 99, lambda cur: None, lambda o: None)

    def forget(current: ObjectRecord | None) -> bool:
        catalog.drop_object_row(current.object_id)
        return True
    assert catalog.with_object("lost", forget) is True
    assert catalog.get_object("lost") is None


def test_expiry_listing_and_forgetting_ended_sessions(catalog):
    catalog.insert_session(session("old", expires_at_ms=5))
    catalog.insert_session(session("new", expires_at_ms=5000))
    assert [r.upload_id for r in catalog.expired_active(100)] == ["old"]
    catalog.end_session("old", State.ABORTED, 100, 200)
    assert catalog.forget_ended(150) == 0
    assert catalog.forget_ended(250) == 1
    assert catalog.get_session("old") is None and catalog.get_session("new") is not None


def test_postgres_nodes_starting_at_once_create_one_schema(postgres_server):
    """Whichever node comes first creates the schema; several at once agree on one identity
    (an advisory lock orders them). SQLite needs no such test: one supervisor prepares it,
    holding the data directory's lock."""
    url = postgres_server.new_database()
    backends = [open_backend(Settings(catalog=url, data_dir="", io_threads=2)) for _ in range(6)]
    failures: list[BaseException] = []

    def prepare(backend) -> None:
        try:
            backend.prepare()
        except BaseException as exc:  # reported below
            failures.append(exc)
    in_threads(prepare, backends)
    assert failures == []
    assert len({b.catalog_id() for b in backends}) == 1
