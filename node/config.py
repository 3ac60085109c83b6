"""The node's settings: one typed object, filled once at start.

Every setting is declared once below with its type, default, validation and meaning. Values
come, later ones winning, from the defaults, an optional TOML file (`--config FILE`, keys are
the field names), the environment (`MINI_OSS_<FIELD>` in upper case) and the command line.
Workers receive the finished object; nothing re-reads the environment after start.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _setting(default: Any, doc: str, *, minimum: float | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "minimum": minimum})


class SettingsError(ValueError):
    """A setting has a value the node cannot run with."""


@dataclass(frozen=True)
class Settings:
    listen: str = _setting("0.0.0.0:8080", "gRPC address HOST:PORT; port 0 picks a free one.")
    data_dir: str = _setting("./static", "Directory holding parts/, objects/, index/ and the catalog.")
    catalog: str = _setting("", "Catalog: empty = SQLite in the data dir (one node); a postgresql:// URL = PostgreSQL, shared by several nodes.")
    node_name: str = _setting("", "This node's name in GetNodeInfo and the catalog; empty = HOST:PORT.")
    # A PostgreSQL restart takes a few seconds: a call waits that long for a connection before
    # it is refused with CATALOG_UNAVAILABLE (clients retry that), rather than failing at once.
    catalog_timeout: float = _setting(5.0, "Seconds a call waits for a PostgreSQL catalog connection before UNAVAILABLE CATALOG_UNAVAILABLE.", minimum=0.1)
    workers: int = _setting(0, "Worker processes; 0 means one per core.", minimum=0)
    metrics_listen: str = _setting("127.0.0.1:9180", "HOST:PORT of the /metrics endpoint; empty turns it off.")
    session_ttl: float = _setting(86400.0, "Seconds an idle ACTIVE session lives, and an ended one is remembered.", minimum=0.001)
    stream_idle_timeout: float = _setting(30.0, "Seconds an Upload stream may send nothing before it is ended.", minimum=0.001)
    grace: float = _setting(30.0, "Seconds running streams get to finish when the node stops.", minimum=0)
    default_chunk_size: int = _setting(1 * MiB, "Chunk size advised to clients that ask for 0.", minimum=4 * KiB)
    # 2 MiB, not 4: a download message is the chunk plus framing and ObjectInfo, and stock gRPC
    # clients refuse messages over 4 MiB; at 2 MiB any client can ask for the largest chunk.
    max_chunk_size: int = _setting(2 * MiB, "Largest chunk accepted on upload or sent on download.", minimum=4 * KiB)
    max_object_size: int = _setting(1024 * GiB, "Largest file_size a session may declare.", minimum=0)
    # Measured (tuning/results/2026-11-24-1144.md): at 100 streams, checkpoints every
    # 64 MiB / 5 s and 4 I/O threads left pool threads waiting on fdatasync and SQLite's write
    # lock while other streams' chunks queued; 256 MiB / 30 s and 8 threads took +20% upload.
    checkpoint_bytes: int = _setting(256 * MiB, "An Upload stream makes its progress durable after this many bytes.", minimum=1)
    checkpoint_interval: float = _setting(30.0, "... or after this many seconds, whichever comes first.", minimum=0.001)
    # Measured (tools/bench/RESULTS.md): the page cache takes sustained writes here at ~0.5 GB/s
    # and ~2 ms of kernel CPU per MiB; O_DIRECT writes reach ~1.5 GB/s.
    direct_io: bool = _setting(True, "Write uploads, and read downloads that are not in the page cache, with O_DIRECT where the file system allows (falls back to buffered).")
    # Measured (tools/bench/RESULTS.md): with objects not yet in the page cache, asking the
    # kernel for the next 16 MiB of each download cut time to first byte from 0.68 s to 0.14 s
    # (p50, 100 streams); throughput is bound by CPU either way.
    download_readahead: int = _setting(16 * MiB, "Bytes of a buffered download the kernel is asked to read ahead (posix_fadvise WILLNEED; cold reads with O_DIRECT read none); 0 = off.", minimum=0)
    io_threads: int = _setting(8, "Threads per worker for hashing, pwrite, pread and the catalog.", minimum=1)
    # Measured (tools/bench/RESULTS.md, session 8): a put spends most of its time waiting on
    # fsyncs and on the catalog's group commit, so more puts in flight make bigger batches;
    # 100 puts of 16 KiB on ext4: 724-856/s with 8 put threads, 922-995/s with 32. A put's
    # file is written buffered, so a put thread keeps no O_DIRECT buffer (RSS stays flat).
    put_threads: int = _setting(32, "Threads per worker for one-call puts (PutObject), apart from the I/O threads.", minimum=1)
    sweep_interval: float = _setting(60.0, "Seconds between sweeps that expire idle sessions.", minimum=0.01)
    log_level: str = _setting("INFO", "Logging level of the node's processes.")
    max_sessions: int = _setting(100_000, "ACTIVE sessions allowed node-wide; 0 = unlimited.", minimum=0)
    max_sessions_per_client: int = _setting(20_000, "ACTIVE sessions per client address; 0 = unlimited.", minimum=0)
    disk_reserve: int = _setting(64 * MiB, "New sessions are refused (DISK_FULL) while free space is below this.", minimum=0)
    rate_limit_requests: float = _setting(0.0, "Requests per second per client (token bucket); 0 = off.", minimum=0)
    rate_limit_bytes: int = _setting(0, "Upload and download bytes per second per client; 0 = off.", minimum=0)
    rate_limit_burst: float = _setting(2.0, "Token-bucket depth, in seconds of the rate.", minimum=0.001)
    # A bench client runs 100 streams from one host over 16 connections: the caps sit well above.
    max_streams_per_client: int = _setting(1000, "Upload and Download streams one client address may have open per worker; 0 = unlimited.", minimum=0)
    max_streams_per_connection: int = _setting(256, "Concurrent calls per HTTP/2 connection (grpc.max_concurrent_streams); more wait in the client.", minimum=1)
    download_stall_timeout: float = _setting(60.0, "Seconds a Download may wait for the client to take a chunk before it is ended (IDLE_TIMEOUT).", minimum=0.001)
    auth_token_file: str = _setting("", "Token file (token -> read/write/admin [prefix]); empty = no auth.")
    tls_cert: str = _setting("", "PEM certificate chain for TLS on the gRPC port; empty = plaintext.")
    tls_key: str = _setting("", "PEM private key for --tls-cert.")
    http_listen: str = _setting("0.0.0.0:8081", "HTTP address HOST:PORT (downloads, signed URLs, tus uploads; TLS with --tls-cert too); empty turns it off; port 0 picks a free one.")
    url_signing_key_file: str = _setting("", "File of the key that signs download URLs (shared by every node of a cluster); empty = DATA_DIR/url-signing.key, made on first start.")
    http_cors_origins: str = _setting("", "Comma-separated origins whose web pages may call the HTTP port (CORS), or '*'; empty = none.")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = f.metadata.get("minimum")
            if minimum is not None and value < minimum:
                raise SettingsError(f"{f.name} must be >= {minimum}, got {value!r}")
        if self.default_chunk_size > self.max_chunk_size:
            raise SettingsError("default_chunk_size must not exceed max_chunk_size")
        if self.max_chunk_size > 64 * MiB:
            raise SettingsError("max_chunk_size must be <= 64 MiB")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key go together")
        if self.catalog and not self.catalog.startswith(("postgresql://", "postgres://")):
            raise SettingsError("catalog must be empty (SQLite) or a postgresql:// URL")
        split_host_port(self.listen)
        if self.http_listen:
            split_host_port(self.http_listen)
        if self.metrics_listen:
            split_host_port(self.metrics_listen)

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def grpc_message_limit(self) -> int:
        """The gRPC message limit: above the largest chunk plus framing (API.md)."""
        return self.max_chunk_size + 1 * MiB

    def describe(self) -> str:
        """One line per setting, for the start-up log."""
        from node.catalog.postgres import redact  # (imports no driver)

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["catalog"] = redact(self.catalog)
        return ", ".join(f"{name}={value!r}" for name, value in shown.items())


def split_host_port(addr: str) -> tuple[str, int]:
    """'HOST:PORT' (or ':PORT', '[::1]:PORT') -> (host, port); raise SettingsError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"address must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _coerce(name: str, kind: type, raw: Any) -> Any:
    try:
        if kind is bool and isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc


def load(overrides: Mapping[str, Any] | None = None, *, config_file: str | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults < TOML file < MINI_OSS_* environment < overrides."""
    environ = os.environ if environ is None else environ
    types = {f.name: type(f.default) for f in fields(Settings)}
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("MINI_OSS_CONFIG")
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        for key, raw in data.items():
            name = key.replace("-", "_")
            if name not in types:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, types[name], raw)
    for name, kind in types.items():
        raw = environ.get(f"MINI_OSS_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, kind, raw)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in types:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = _coerce(name, types[name], raw)
    return dataclasses.replace(Settings(), **values)


def documentation() -> list[tuple[str, Any, str]]:
    """(name, default, doc) for every setting: the README table and `serve --help` use it."""
    return [(f.name, f.default, f.metadata["doc"]) for f in fields(Settings)]
