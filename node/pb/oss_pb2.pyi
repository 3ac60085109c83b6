from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateUploadSessionRequest(_message.Message):
    __slots__ = ("object_id", "file_name", "file_size", "chunk_size", "sha256", "content_type", "metadata", "if_absent", "if_generation_match", "slices")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    file_name: str
    file_size: int
    chunk_size: int
    sha256: str
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    if_absent: bool
    if_generation_match: str
    slices: int
    def __init__(self, object_id: _Optional[str] = ..., file_name: _Optional[str] = ..., file_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., if_absent: _Optional[bool] = ..., if_generation_match: _Optional[str] = ..., slices: _Optional[int] = ...) -> None: ...

class UploadSession(_message.Message):
    __slots__ = ("upload_id", "object_id", "file_name", "file_size", "chunk_size", "uploaded_offset", "sha256", "state", "expires_at_unix_ms", "slices", "parent_upload_id", "slice_offset")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[UploadSession.State]
        ACTIVE: _ClassVar[UploadSession.State]
        COMMITTED: _ClassVar[UploadSession.State]
        ABORTED: _ClassVar[UploadSession.State]
    STATE_UNSPECIFIED: UploadSession.State
    ACTIVE: UploadSession.State
    COMMITTED: UploadSession.State
    ABORTED: UploadSession.State
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    PARENT_UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SLICE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    object_id: str
    file_name: str
    file_size: int
    chunk_size: int
    uploaded_offset: int
    sha256: str
    state: UploadSession.State
    expires_at_unix_ms: int
    slices: _containers.RepeatedCompositeFieldContainer[UploadSession]
    parent_upload_id: str
    slice_offset: int
    def __init__(self, upload_id: _Optional[str] = ..., object_id: _Optional[str] = ..., file_name: _Optional[str] = ..., file_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., uploaded_offset: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[_Union[UploadSession.State, str]] = ..., expires_at_unix_ms: _Optional[int] = ..., slices: _Optional[_Iterable[_Union[UploadSession, _Mapping]]] = ..., parent_upload_id: _Optional[str] = ..., slice_offset: _Optional[int] = ...) -> None: ...

class GetUploadSessionRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class AbortUploadSessionRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class AbortUploadSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("upload_id", "offset", "data", "crc32", "sha256", "crc32c")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    offset: int
    data: bytes
    crc32: int
    sha256: str
    crc32c: int
    def __init__(self, upload_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., sha256: _Optional[str] = ..., crc32c: _Optional[int] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("session", "object")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    session: UploadSession
    object: ObjectInfo
    def __init__(self, session: _Optional[_Union[UploadSession, _Mapping]] = ..., object: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("object_id", "start_offset", "end_offset", "chunk_size", "if_generation_match")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    start_offset: int
    end_offset: int
    chunk_size: int
    if_generation_match: str
    def __init__(self, object_id: _Optional[str] = ..., start_offset: _Optional[int] = ..., end_offset: _Optional[int] = ..., chunk_size: _Optional[int] = ..., if_generation_match: _Optional[str] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("offset", "data", "crc32", "object")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    crc32: int
    object: ObjectInfo
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., object: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("object_id", "file_name", "size", "sha256", "content_type", "metadata", "generation", "created_at_unix_ms")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    file_name: str
    size: int
    sha256: str
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    generation: str
    created_at_unix_ms: int
    def __init__(self, object_id: _Optional[str] = ..., file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., generation: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ...) -> None: ...

class StatObjectRequest(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    def __init__(self, object_id: _Optional[str] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("object_id", "if_generation_match")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    if_generation_match: str
    def __init__(self, object_id: _Optional[str] = ..., if_generation_match: _Optional[str] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUploadSessionsRequest(_message.Message):
    __slots__ = ("object_id_prefix", "page_size", "page_token")
    OBJECT_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    object_id_prefix: str
    page_size: int
    page_token: str
    def __init__(self, object_id_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUploadSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[UploadSession]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[UploadSession, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("version", "default_chunk_size", "max_chunk_size", "max_object_size", "session_ttl_ms", "checksums", "workers", "worker_id", "stream_idle_timeout_ms", "max_sessions", "max_sessions_per_client", "disk_reserve_bytes", "rate_limit_requests", "rate_limit_bytes", "auth_required", "max_streams_per_client", "max_streams_per_connection", "download_stall_timeout_ms", "node_name", "catalog_backend", "http_port")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_OBJECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    DISK_RESERVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_PER_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_STALL_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CATALOG_BACKEND_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    version: str
    default_chunk_size: int
    max_chunk_size: int
    max_object_size: int
    session_ttl_ms: int
    checksums: _containers.RepeatedScalarFieldContainer[str]
    workers: int
    worker_id: int
    stream_idle_timeout_ms: int
    max_sessions: int
    max_sessions_per_client: int
    disk_reserve_bytes: int
    rate_limit_requests: float
    rate_limit_bytes: int
    auth_required: bool
    max_streams_per_client: int
    max_streams_per_connection: int
    download_stall_timeout_ms: int
    node_name: str
    catalog_backend: str
    http_port: int
    def __init__(self, version: _Optional[str] = ..., default_chunk_size: _Optional[int] = ..., max_chunk_size: _Optional[int] = ..., max_object_size: _Optional[int] = ..., session_ttl_ms: _Optional[int] = ..., checksums: _Optional[_Iterable[str]] = ..., workers: _Optional[int] = ..., worker_id: _Optional[int] = ..., stream_idle_timeout_ms: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_sessions_per_client: _Optional[int] = ..., disk_reserve_bytes: _Optional[int] = ..., rate_limit_requests: _Optional[float] = ..., rate_limit_bytes: _Optional[int] = ..., auth_required: _Optional[bool] = ..., max_streams_per_client: _Optional[int] = ..., max_streams_per_connection: _Optional[int] = ..., download_stall_timeout_ms: _Optional[int] = ..., node_name: _Optional[str] = ..., catalog_backend: _Optional[str] = ..., http_port: _Optional[int] = ...) -> None: ...

class SignDownloadUrlRequest(_message.Message):
    __slots__ = ("object_id", "expires_in_seconds", "generation")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    expires_in_seconds: int
    generation: str
    def __init__(self, object_id: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ..., generation: _Optional[str] = ...) -> None: ...

class SignedDownloadUrl(_message.Message):
    __slots__ = ("path", "http_port", "expires_at_unix_ms", "generation")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    path: str
    http_port: int
    expires_at_unix_ms: int
    generation: str
    def __init__(self, path: _Optional[str] = ..., http_port: _Optional[int] = ..., expires_at_unix_ms: _Optional[int] = ..., generation: _Optional[str] = ...) -> None: ...

class PutObjectRequest(_message.Message):
    __slots__ = ("object_id", "file_name", "data", "crc32", "sha256", "content_type", "metadata", "if_absent", "if_generation_match", "crc32c")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    IF_GENERATION_MATCH_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    file_name: str
    data: bytes
    crc32: int
    sha256: str
    content_type: str
    metadata: _containers.ScalarMap[str, str]
    if_absent: bool
    if_generation_match: str
    crc32c: int
    def __init__(self, object_id: _Optional[str] = ..., file_name: _Optional[str] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., if_absent: _Optional[bool] = ..., if_generation_match: _Optional[str] = ..., crc32c: _Optional[int] = ...) -> None: ...

class PutObjectResponse(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: ObjectInfo
    def __init__(self, object: _Optional[_Union[ObjectInfo, _Mapping]] = ...) -> None: ...
