"""`mini-oss`: the command line (also `python -m node`).

`serve` builds the settings (defaults < `--config FILE` < `MINI_OSS_*` environment < flags the
user gave) and hands them to the supervisor (`node.workers.supervisor.run`), imported only there
so the client commands never load the node. `put`, `get`, `stat`, `ls` and `rm` are thin shells
over `node.client.Client`; `fsck` over `node.fsck` (it reads the data directory, and rebuilds its
catalog on request).

`get` without `-o` (or with `-o DIR`) takes the file name from the node, so it trusts none of
it: `safe_file_name` keeps a plain base name (no directories, control characters or leading
dots), and an existing file is never replaced unless `--force`.

Client commands take `--token` (or `--token-file`, `$MINI_OSS_TOKEN`, `$MINI_OSS_TOKEN_FILE`:
these keep the token out of the process list) and `--tls`, `--tls-ca`, `--tls-server-name`.
No message ever prints a token.

`put` and `get` resume when run again (`node.transfers.resume`, state in `node.transfers.transfer_state`): Ctrl-C,
kill -9, a lost connection or a node restart leave what a re-run needs; `--no-resume` starts
afresh. `uploads` lists the node's ACTIVE sessions, `abort` ends one. `put -r DIR` and
`get -r PREFIX DIR` move whole trees, several files at a time (`node.transfers.tree`, `node.transfers.tree_run`).

Output: a short human line (or table) on stdout; with `--json` the ObjectInfo fields as one JSON
object (`ls`, `uploads`: one per line) for scripts. A progress line (binary units, rate, ETA;
`node.transfers.progress`) goes to stderr only when stdout and stderr are terminals and none of `--json`,
`--quiet`, `--no-progress` is given. Any failure is ONE line on stderr,
`mini-oss: error: CODE REASON: message`, and exit status 1; usage errors exit 2 (argparse);
Ctrl-C exits 130 after saying how to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import mimetypes
import os
import re
import sys
import time
import tomllib
import unicodedata
from typing import Any, Iterator, Sequence

from node import config
from node.errors import OssError
from node.transfers.local_names import local_file_name, safe_file_name
from node.transfers.messages import format_error
from node.transfers.progress import human_size

PROG = "mini-oss"
DEFAULT_ADDR = "127.0.0.1:8080"
OBJECT_ID_MAX = 128
_OBJECT_ID_BAD = re.compile(r"[^A-Za-z0-9._-]")
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)


def derive_object_id(file_name: str) -> str:
    """A valid object_id from a file's base name: accents dropped, other characters outside
    [A-Za-z0-9._-] turned into '_', leading dots removed, cut to 128 keeping the extension."""
    name = os.path.basename(file_name)
    name = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    name = _OBJECT_ID_BAD.sub("_", name).lstrip(".")
    if len(name) > OBJECT_ID_MAX:
        stem, ext = os.path.splitext(name)
        if ext and len(ext) <= 16 and stem:
            name = stem[:OBJECT_ID_MAX - len(ext)] + ext
        else:
            name = name[:OBJECT_ID_MAX]
    if not name:
        raise ValueError(f"cannot make an object id from {file_name!r}: pass --object-id")
    return name


def parse_range(text: str) -> tuple[int, int | None]:
    """'START-END' (END exclusive), 'START-' (to the end), '-N' (the last N bytes)
    -> (start_offset, end_offset or None), in the API's terms."""
    match = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", text)
    if not match or not (match.group(1) or match.group(2)):
        raise argparse.ArgumentTypeError(
            f"invalid range {text!r}: use START-END (END exclusive), START- or -N")
    first, second = match.groups()
    if not first:
        count = int(second)
        if count == 0:
            raise argparse.ArgumentTypeError("invalid range '-0': the last 0 bytes is nothing")
        return -count, None
    start = int(first)
    end = int(second) if second else None
    if end is not None and end < start:
        raise argparse.ArgumentTypeError(f"invalid range {text!r}: END is before START")
    return start, end


def parse_size(text: str) -> int:
    """'1048576', '64K', '1M', '1MiB', '2G' -> bytes (K/M/G/T are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 65536, 64K, 1M")
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(match.group(1)) * unit


def parse_parallel(text: str) -> int:
    """--parallel N: a stream count from 1 to parallel_plan.MAX_STREAMS."""
    from node.transfers.parallel_plan import MAX_STREAMS

    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_STREAMS:
        raise argparse.ArgumentTypeError(f"invalid stream count {text!r}: use 1 to {MAX_STREAMS}")
    return int(text)


def parse_seconds(text: str) -> int:
    """--expires: whole seconds, 1 to 7 days."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use 1 to 604800 seconds")
    return int(text)


def parse_metadata(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid metadata {text!r}: use KEY=VALUE")
    return key, value


def info_dict(info: Any) -> dict[str, Any]:
    """The ObjectInfo fields, defaults included, names as in the proto, int64 as numbers."""
    from google.protobuf import json_format

    return json_format.MessageToDict(info, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True,
                                     unquote_int64_if_possible=True)


def _time(ms: int) -> str:
    if not ms:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# The parser


#: `mini-oss serve` flags: one per setting (node.config documents each), with how to read it.
SERVE_FLAGS: list[tuple[str, Any, str]] = [
    ("--listen", str, "HOST:PORT"), ("--data-dir", str, "DIR"), ("--catalog", str, "URL"),
    ("--catalog-timeout", float, "SECONDS"), ("--node-name", str, "NAME"),
    ("--workers", int, "N"),
    ("--metrics-listen", str, "HOST:PORT"), ("--session-ttl", float, "SECONDS"),
    ("--stream-idle-timeout", float, "SECONDS"), ("--grace", float, "SECONDS"),
    ("--default-chunk-size", parse_size, "BYTES"), ("--max-chunk-size", parse_size, "BYTES"),
    ("--max-object-size", parse_size, "BYTES"), ("--log-level", str, "LEVEL"),
    ("--checkpoint-bytes", parse_size, "BYTES"), ("--checkpoint-interval", float, "SECONDS"),
    ("--direct-io", bool, ""), ("--download-readahead", parse_size, "BYTES"),
    ("--io-threads", int, "N"), ("--put-threads", int, "N"),
    ("--sweep-interval", float, "SECONDS"),
    ("--max-sessions", int, "N"), ("--max-sessions-per-client", int, "N"),
    ("--disk-reserve", parse_size, "BYTES"), ("--rate-limit-requests", float, "PER_SECOND"),
    ("--rate-limit-bytes", parse_size, "BYTES_PER_SECOND"),
    ("--rate-limit-burst", float, "SECONDS"), ("--auth-token-file", str, "FILE"),
    ("--tls-cert", str, "PEM_FILE"), ("--tls-key", str, "PEM_FILE"),
    ("--max-streams-per-client", int, "N"), ("--max-streams-per-connection", int, "N"),
    ("--download-stall-timeout", float, "SECONDS"), ("--http-listen", str, "HOST:PORT"),
    ("--url-signing-key-file", str, "FILE"), ("--http-cors-origins", str, "ORIGINS"),
]


TREE_JOBS = 4


def parse_jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"invalid --jobs {text!r}: a whole number, 1 to 64")
    return int(text)


EXIT_STATUSES = ("exit status: 0 done; 1 failure (one line on stderr); 2 usage error; "
                 "130 interrupted by Ctrl-C (put and get then say how to continue: run the "
                 "same command again)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Mini OSS object storage node and client.",
                                     epilog=EXIT_STATUSES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    docs = {name: doc for name, _default, doc in config.documentation()}
    serve = sub.add_parser("serve", help="run a node", description="Run a node until signalled.")
    for flag, kind, metavar in SERVE_FLAGS:
        name = flag[2:].replace("-", "_")
        if kind is bool:
            serve.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=docs.get(name, ""))
        else:
            serve.add_argument(flag, dest=name, type=kind, metavar=metavar, default=None,
                               help=docs.get(name, ""))
    serve.add_argument("--config", metavar="FILE", default=None,
                       help="TOML file of settings (keys are the setting names).")
    serve.set_defaults(func=cmd_serve)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", default=os.environ.get("MINI_OSS_ADDR", DEFAULT_ADDR),
                        metavar="HOST:PORT[,HOST:PORT...]",
                        help=f"the node (default {DEFAULT_ADDR}); several nodes of one namespace: "
                             "used round robin, the next one when one is unavailable")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    secret = common.add_mutually_exclusive_group()
    secret.add_argument("--token", metavar="TOKEN",
                        help="bearer token for a node that requires one; visible to other "
                             "users in the process list, so prefer --token-file or the "
                             "MINI_OSS_TOKEN environment variable")
    secret.add_argument("--token-file", metavar="PATH",
                        help="read the token from this file (default: $MINI_OSS_TOKEN_FILE)")
    common.add_argument("--tls", action="store_true",
                        help="connect with TLS, trusting the system's root certificates")
    common.add_argument("--tls-ca", metavar="PATH",
                        help="connect with TLS, trusting only the PEM certificates in PATH")
    common.add_argument("--tls-server-name", metavar="NAME",
                        help="the name the node's certificate must carry (default: the host "
                             "of --addr); implies --tls")

    transfer = argparse.ArgumentParser(add_help=False)
    transfer.add_argument("--no-resume", action="store_true",
                          help="start afresh: forget (and for put, abort) what an interrupted "
                               "run of this same command left to resume")
    transfer.add_argument("--no-progress", action="store_true", help="draw no progress line")
    transfer.add_argument("--quiet", "-q", action="store_true",
                          help="print nothing but errors (no progress, no notices, no result)")

    tree = argparse.ArgumentParser(add_help=False)
    tree.add_argument("--jobs", type=parse_jobs, default=None, metavar="N",
                      help=f"with -r: files in flight at once (default {TREE_JOBS})")
    tree.add_argument("--continue-on-error", action="store_true",
                      help="with -r: go on with the other files after one fails (they are "
                           "listed at the end, exit status 1); by default the first failure "
                           "stops starting new files")

    put = sub.add_parser(
        "put", parents=[common, transfer, tree], help="upload a file (resumes when run again)",
        description="Upload FILE. Interrupted (Ctrl-C, kill, a lost connection, a node "
                    "restart), the same command run again resumes where the node left off, "
                    "if FILE is unchanged; state lives in $XDG_CACHE_HOME/mini-oss/ "
                    "(default ~/.cache/mini-oss/). With -r, FILE is a directory: every "
                    "regular file below it is uploaded as PREFIX + its path below FILE, escaped "
                    "into an object id ('/' and bytes outside A-Z a-z 0-9 . - as _XX, '_' as "
                    "__: 'docs/a b.txt' -> PREFIX + 'docs_2Fa_20b.txt'); files already stored "
                    "with the same SHA-256 are skipped, so a re-run finishes an interrupted "
                    "tree.", epilog=EXIT_STATUSES)
    put.add_argument("file", metavar="FILE")
    put.add_argument("-r", "--recursive", action="store_true",
                     help="FILE is a directory: upload the whole tree (symbolic links to "
                          "directories are skipped)")
    put.add_argument("--prefix", default=None, metavar="P",
                     help="with -r: the start of every object id (default none), e.g. 'backup-'")
    put.add_argument("--object-id", metavar="ID",
                     help="default: the file's base name made a valid object id")
    put.add_argument("--content-type", metavar="TYPE",
                     help="default: guessed from the file name")
    put.add_argument("--chunk-size", type=parse_size, default=0, metavar="BYTES",
                     help="advice to the node (default: the node's)")
    put.add_argument("--if-absent", action="store_true", help="fail if the object exists")
    put.add_argument("--if-generation-match", default="", metavar="G",
                     help="replace only this generation")
    put.add_argument("--metadata", "-m", type=parse_metadata, action="append", default=[],
                     metavar="KEY=VALUE", help="user metadata (repeatable)")
    put.add_argument("--upload-id", metavar="ID",
                     help="continue this upload session (without local resume state)")
    put.add_argument("--parallel", type=parse_parallel, default=None, metavar="N",
                     help="upload over N streams at once (a sliced session of N slices, "
                          "each resumable; default 1: see README, 'Parallel transfers')")
    put.set_defaults(func=cmd_put)

    get = sub.add_parser(
        "get", parents=[common, transfer, tree],
        help="download an object (resumes when run again)",
        description="Download OBJECT_ID. The bytes go to PATH.mini-oss-partial and are renamed "
                    "into place once their SHA-256 is checked; interrupted, the same command "
                    "run again asks only for the rest, if the object did not change (a --range "
                    "or '-o -' download starts over). 'get -r PREFIX DIR' downloads every "
                    "object whose id starts with PREFIX to DIR/<the rest of the id, unescaped "
                    "as put -r escaped it>; a path that would leave DIR is refused, files "
                    "already there with the same SHA-256 are skipped, other existing files are "
                    "kept unless --force. An object of 64 MiB or more comes over several "
                    "streams at once (--parallel).", epilog=EXIT_STATUSES)
    get.add_argument("object_id", metavar="OBJECT_ID")
    get.add_argument("dest", nargs="?", default=None, metavar="DIR",
                     help="with -r: the directory to write into (default: here; or -o DIR)")
    get.add_argument("-r", "--recursive", action="store_true",
                     help="OBJECT_ID is a prefix: download every object under it into DIR")
    get.add_argument("-o", "--output", metavar="PATH",
                     help="file or directory to write (default: the object's file name, made "
                          "safe, here; '-' = standard output). A file PATH is replaced if it "
                          "exists")
    get.add_argument("--range", type=parse_range, metavar="START-END",
                     help="bytes START..END-1; 'START-' to the end; '-N' the last N")
    get.add_argument("--force", action="store_true",
                     help="replace an existing file of the object's name (without -o, or with "
                          "-o DIR)")
    get.add_argument("--parallel", type=parse_parallel, default=None, metavar="N",
                     help="fetch the object as N byte ranges over N streams and connections at "
                          "once, written into one file (default: one stream below 64 MiB, "
                          "else the node's worker count, 2 to 8); 1 = one stream. A --range or "
                          "'-o -' download always uses one stream")
    get.set_defaults(func=cmd_get)

    stat = sub.add_parser("stat", parents=[common], help="show an object")
    stat.add_argument("object_id", metavar="ID")
    stat.set_defaults(func=cmd_stat)

    ls = sub.add_parser("ls", parents=[common], help="list objects")
    ls.add_argument("--prefix", default="", metavar="P")
    ls.set_defaults(func=cmd_ls)

    uploads = sub.add_parser("uploads", parents=[common], help="list unfinished upload sessions",
                             description="List the node's ACTIVE upload sessions: upload id, "
                                         "object id, bytes done of size, expiry.")
    uploads.add_argument("--prefix", default="", metavar="P", help="object ids starting with P")
    uploads.set_defaults(func=cmd_uploads)

    abort = sub.add_parser("abort", parents=[common], help="abort an upload session",
                           description="Abort an ACTIVE upload session and free its bytes.")
    abort.add_argument("upload_id", metavar="UPLOAD_ID")
    abort.set_defaults(func=cmd_abort)

    url = sub.add_parser(
        "url", parents=[common], help="print a signed download URL",
        description="Print an http:// (https:// with TLS) URL that downloads OBJECT_ID with no "
                    "header (a browser, curl, a CDN) until it expires. The node signs it for a "
                    "token that may read the object; changing any part of it makes it fail "
                    "(403).", epilog=EXIT_STATUSES)
    url.add_argument("object_id", metavar="OBJECT_ID")
    url.add_argument("--expires", type=parse_seconds, default=3600, metavar="SECONDS",
                     help="how long the URL works (default 3600; at most 604800, 7 days)")
    url.add_argument("--generation", default="", metavar="G",
                     help="serve only this version (the URL fails once it is replaced)")
    url.set_defaults(func=cmd_url)

    rm = sub.add_parser("rm", parents=[common], help="delete an object")
    rm.add_argument("object_id", metavar="ID")
    rm.add_argument("--if-generation-match", default="", metavar="G",
                    help="delete only this generation")
    rm.set_defaults(func=cmd_rm)

    fsck = sub.add_parser(
        "fsck", help="check a data directory (read-only), or rebuild its catalog",
        description="Report what a data directory holds and what is wrong with it, changing "
                    "nothing (exit 0: clean, 1: problems). With --rebuild-catalog, rebuild a "
                    "missing or damaged catalog from index/ and objects/ (the node must be "
                    "stopped).")
    fsck.add_argument("--data-dir", default=os.environ.get("MINI_OSS_DATA_DIR", "./static"),
                      metavar="DIR", help="the node's data directory (default ./static)")
    fsck.add_argument("--json", action="store_true", help="print one JSON object")
    fsck.add_argument("--verify", action="store_true",
                      help="also read every object and check its size and SHA-256")
    fsck.add_argument("--rebuild-catalog", action="store_true",
                      help="write a new catalog from index/ and objects/, keeping the old one "
                           "as catalog.db.damaged-<time>")
    fsck.add_argument("--force", action="store_true",
                      help="with --rebuild-catalog: rebuild even a readable catalog")
    fsck.set_defaults(func=cmd_fsck)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        hint = getattr(exc, "hint", "")
        print(f"{PROG}: interrupted" + (f" {hint}" if hint else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OssError, OSError, ValueError) as err:
        print(f"{PROG}: error: {format_error(err, getattr(args, 'addr', ''))}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------------------------
# Commands


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                 for flag, _kind, _metavar in SERVE_FLAGS}
    try:
        settings = config.load(overrides, config_file=args.config)
    except (config.SettingsError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"{PROG}: error: {format_error(exc)}", file=sys.stderr)
        return 2
    from node.workers.supervisor import run

    return run(settings)


def read_token(args: argparse.Namespace, environ=os.environ) -> str | None:
    """The token: --token, else --token-file, else $MINI_OSS_TOKEN, else $MINI_OSS_TOKEN_FILE.

    A token file holds the token alone (surrounding white space is ignored). Errors name the
    file, never its content."""
    if args.token is not None:
        return args.token
    path = args.token_file or None
    if path is None:
        token = environ.get("MINI_OSS_TOKEN")
        if token:
            return token
        path = environ.get("MINI_OSS_TOKEN_FILE") or None
    if path is None:
        return None
    with open(path, "rb") as f:
        data = f.read(64 * 1024)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"token file {path!r} holds characters a token cannot have") from None
    if not token or len(token.split()) != 1:
        raise ValueError(f"token file {path!r} must hold one token and nothing else")
    return token


def _client(args: argparse.Namespace):
    from node.client import Client

    return Client(args.addr, token=read_token(args), tls=args.tls, tls_ca=args.tls_ca,
                  tls_server_name=args.tls_server_name)


@contextlib.contextmanager
def _progress(args: argparse.Namespace, label: str) -> Iterator[Any]:
    """A progress(done, total) callback drawing one line on stderr, or None: only when both
    stdout and stderr are terminals (never into a pipe or a file) and nothing asked for quiet."""
    if (args.json or getattr(args, "quiet", False) or getattr(args, "no_progress", False)
            or not sys.stdout.isatty() or not sys.stderr.isatty()):
        yield None
        return
    from node.transfers.progress import ProgressLine

    line = ProgressLine(label)
    try:
        yield line
    finally:
        line.close()


def _notifier(args: argparse.Namespace):
    """Where a transfer says what it decided (resuming, starting over, and why): stderr."""
    def notify(message: str) -> None:
        if not getattr(args, "quiet", False):
            print(f"{PROG}: {message}", file=sys.stderr)
    return notify


def _print_info(info: Any, args: argparse.Namespace, human: str, *, stream=None) -> None:
    stream = stream or sys.stdout
    if getattr(args, "quiet", False) and not args.json:
        return
    if args.json:
        print(json.dumps(info_dict(info), sort_keys=True), file=stream)
    else:
        print(human, file=stream)


def cmd_put(args: argparse.Namespace) -> int:
    if _wants_tree(args):
        return cmd_tree(args)
    path = args.file
    file_name = local_file_name(path)
    object_id = args.object_id or (None if args.upload_id else derive_object_id(file_name))
    content_type = args.content_type
    if content_type is None:
        content_type = mimetypes.guess_type(file_name)[0] or ""
    with _client(args) as client, _progress(args, object_id or args.upload_id) as progress:
        parallel = _parallel(args.parallel)
        if parallel > 1:
            client.open_channels(parallel)  # a connection per stream: several workers take it
        if args.upload_id:  # the person names the session: no local state involved
            info = client.upload(path, object_id, file_name=file_name, content_type=content_type,
                                 metadata=dict(args.metadata), if_absent=args.if_absent,
                                 if_generation_match=args.if_generation_match,
                                 chunk_size=args.chunk_size, upload_id=args.upload_id,
                                 progress=progress, parallel=parallel)
        else:
            from node.transfers import resume
            from node.transfers.transfer_state import StateStore

            info = resume.put(client, StateStore(), path, object_id, node=args.addr,
                              fresh=args.no_resume, notify=_notifier(args), progress=progress,
                              file_name=file_name, content_type=content_type,
                              metadata=dict(args.metadata), if_absent=args.if_absent,
                              if_generation_match=args.if_generation_match,
                              chunk_size=args.chunk_size, parallel=parallel)
    _print_info(info, args, f"uploaded {info.object_id} ({human_size(info.size)}, "
                            f"generation {info.generation}, sha256 {info.sha256})")
    return 0


def _parallel(asked: int | None) -> int:
    """How many streams a put uses: as asked, else one. Measured (README, "Parallel
    transfers"): a sliced session's commit reads every byte back to hash it and writes the
    object once more, which on a machine whose cores and disk the client shares with the node
    costs more than the extra streams win, unlike get's ranges."""
    return asked if asked is not None else 1


def cmd_get(args: argparse.Namespace) -> int:
    if _wants_tree(args):
        return cmd_tree(args)
    start, end = args.range or (0, None)
    output = args.output
    overwrite = True
    with _client(args) as client:
        generation = ""
        if output is None or (output != "-" and os.path.isdir(output)):
            # The name comes from the node: only a safe base name of it, inside that directory,
            # and never over an existing file unless --force.
            info = client.stat(args.object_id)  # the name to write to; pins this version
            generation = info.generation
            output = os.path.join(output or ".", safe_file_name(info.file_name, args.object_id))
            overwrite = args.force
            if not overwrite and os.path.lexists(output):
                raise ValueError(_exists_message(output))
        with _progress(args, args.object_id) as progress:
            if output == "-":
                info = client.download(args.object_id, sys.stdout.buffer, start=start, end=end,
                                       if_generation_match=generation, progress=progress)
                sys.stdout.buffer.flush()
            else:
                try:
                    info = _download_to_file(client, args, output, start, end, generation,
                                             overwrite, progress)
                except FileExistsError:  # it appeared while we downloaded
                    raise ValueError(_exists_message(output)) from None
    where = "standard output" if output == "-" else output
    _print_info(info, args, f"downloaded {info.object_id} to {where}",
                stream=sys.stderr if output == "-" else sys.stdout)
    return 0


def _download_to_file(client, args: argparse.Namespace, output: str, start: int,
                      end: int | None, generation: str, overwrite: bool, progress) -> Any:
    """A whole object resumes across runs (node.transfers.resume), over several streams if it is big or
    --parallel says so; a range is small enough to redo."""
    if (start, end) != (0, None):
        return client.download(args.object_id, output, start=start, end=end,
                               if_generation_match=generation, progress=progress,
                               overwrite=overwrite)
    from node.transfers import resume
    from node.transfers.transfer_state import StateStore

    return resume.get(client, StateStore(), args.object_id, output, node=args.addr,
                      overwrite=overwrite, generation=generation, fresh=args.no_resume,
                      notify=_notifier(args), progress=progress, parallel=args.parallel)


def _wants_tree(args: argparse.Namespace) -> bool:
    """-r, or something only -r takes (cmd_tree then says that it goes with -r)."""
    return (args.recursive or args.jobs is not None or args.continue_on_error
            or getattr(args, "prefix", None) is not None
            or getattr(args, "dest", None) is not None)


def _tree_usage_error(args: argparse.Namespace) -> str | None:
    from node.names import is_object_id_prefix

    if not args.recursive:
        return ("DIR, --jobs and --continue-on-error go with -r (one object: -o PATH)"
                if args.command == "get" else "--prefix, --jobs and --continue-on-error go with -r")
    if args.command == "put":
        if args.object_id or args.upload_id or args.if_generation_match:
            return ("-r names every object itself: no --object-id, --upload-id or "
                    "--if-generation-match")
        prefix = args.prefix or ""
        if not is_object_id_prefix(prefix) or prefix.startswith("."):
            return (f"--prefix {prefix!r} cannot begin an object id: only A-Z a-z 0-9 . _ -, "
                    f"not starting with '.' (inside the tree, put -r writes '/' as _2F)")
    elif args.range or args.output == "-" or (args.output and args.dest):
        return "-r writes files into one DIR: no --range, no '-o -', DIR given once"
    return None


def cmd_tree(args: argparse.Namespace) -> int:
    """put -r / get -r: one summary line (or JSON object) on stdout, each failed file one
    line on stderr; exit 1 if any file failed, 2 for a usage error."""
    problem = _tree_usage_error(args)
    if problem:
        print(f"{PROG} {args.command}: error: {problem}", file=sys.stderr)
        return 2
    from node.transfers import tree_run

    started = time.monotonic()
    with _client(args) as client, _progress(args, f"{args.command} -r") as line:
        progress = tree_run.TreeProgress(line, args.command, _notifier(args))
        common = dict(node=args.addr, jobs=args.jobs or TREE_JOBS, fresh=args.no_resume,
                      keep_going=args.continue_on_error, progress=progress)
        if args.command == "put":
            tally = tree_run.put_tree(client, args.file, args.prefix or "",
                                      content_type=args.content_type, if_absent=args.if_absent,
                                      metadata=dict(args.metadata), chunk_size=args.chunk_size,
                                      **common)
        else:
            tally = tree_run.get_tree(client, args.object_id, args.dest or args.output or ".",
                                      force=args.force, **common)
    seconds = time.monotonic() - started
    for failure in tally.failures:
        print(f"{PROG}: error: {failure.line()}", file=sys.stderr)
    if args.json:
        print(json.dumps(tally.to_dict(seconds), sort_keys=True))
    elif not args.quiet:
        print(tally.summary_line(seconds))
    return 1 if tally.failures else 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Read-only report (exit 0 clean, 1 problems), or --rebuild-catalog (0 done, 1 refused)."""
    from node import fsck
    from node.datadir import DataDirError

    if args.force and not args.rebuild_catalog:
        print(f"{PROG} fsck: error: --force only goes with --rebuild-catalog", file=sys.stderr)
        return 2
    try:
        if args.rebuild_catalog:
            result = fsck.rebuild_catalog(args.data_dir, force=args.force)
            if args.json:
                print(json.dumps(result.to_dict(), sort_keys=True))
            else:
                print("\n".join(result.lines()))
            return 0
        report = fsck.check(args.data_dir, verify=args.verify)
    except (fsck.FsckError, DataDirError) as exc:
        print(f"{PROG}: error: {format_error(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        for problem in report.problems:
            print(" ".join(problem.line().split()))
        print(report.summary())
    return 0 if report.clean else 1


def _exists_message(path: str) -> str:
    return f"{path!r} exists: not replacing it (use --force, or -o PATH)"


def cmd_stat(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.stat(args.object_id)
    metadata = ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())) or "-"
    _print_info(info, args, "\n".join([
        f"object_id:    {info.object_id}",
        f"file_name:    {info.file_name}",
        f"size:         {info.size} ({human_size(info.size)})",
        f"sha256:       {info.sha256}",
        f"content_type: {info.content_type or '-'}",
        f"generation:   {info.generation}",
        f"created:      {_time(info.created_at_unix_ms)}",
        f"metadata:     {metadata}",
    ]))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for info in client.list_objects(prefix=args.prefix):
            _print_info(info, args, f"{info.size:>14}  {_time(info.created_at_unix_ms)}  "
                                    f"{info.object_id}")
    return 0


def cmd_uploads(args: argparse.Namespace) -> int:
    with _client(args) as client:
        sessions = list(client.list_sessions(prefix=args.prefix))
        # A sliced session's progress is its slices': they are listed as sessions too.
        done: dict[str, int] = {}
        for session in sessions:
            if session.parent_upload_id:
                done[session.parent_upload_id] = (done.get(session.parent_upload_id, 0)
                                                  + session.uploaded_offset)
        for session in sessions:
            if args.json:
                print(json.dumps(info_dict(session), sort_keys=True))
                continue
            shape = (f"  slice of {session.parent_upload_id} at {human_size(session.slice_offset)}"
                     if session.parent_upload_id else "")
            held = session.uploaded_offset + done.get(session.upload_id, 0)
            print(f"{session.upload_id}  {session.object_id}  "
                  f"{human_size(held)} of {human_size(session.file_size)}"
                  f"  expires {_time(session.expires_at_unix_ms)}{shape}")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    with _client(args) as client:
        url = client.sign_url(args.object_id, expires=args.expires, generation=args.generation)
    print(json.dumps({"url": url}) if args.json else url)
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.abort_session(args.upload_id)
    if args.json:
        print(json.dumps({"upload_id": args.upload_id, "aborted": True}))
    else:
        print(f"aborted {args.upload_id}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.object_id, if_generation_match=args.if_generation_match)
    if args.json:
        print(json.dumps({"object_id": args.object_id, "deleted": True}))
    else:
        print(f"deleted {args.object_id}")
    return 0
