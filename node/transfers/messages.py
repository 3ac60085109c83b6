"""What a person reads when a transfer fails: one line per error, with the hint that helps."""

from __future__ import annotations

from node.errors import OssError
from node.transfers.transfer_state import RERUN_RESUMES


def format_error(err: BaseException, addr: str = "") -> str:
    """One line for stderr: 'CODE REASON: message', plus a hint when one helps."""
    if isinstance(err, OssError):
        head = f"{err.code} {err.reason}" if err.reason else err.code
        message = err.message
        if not err.reason and err.code == "UNAVAILABLE" and addr:
            message = f"cannot reach the node at {addr}: {message}"
        line = f"{head}: {message}"
        upload_id = err.metadata.get("upload_id")
        if err.metadata.get(RERUN_RESUMES):  # put/get kept their resume state
            line += " (run the same command again to resume)"
        elif upload_id and (err.retryable or err.code == "CANCELLED"):
            line += f" (continue with: put --upload-id {upload_id})"
    elif isinstance(err, OSError) and err.filename is not None:
        line = f"{err.strerror or err}: {err.filename!r}"
    else:
        line = str(err) or type(err).__name__
    return " ".join(line.split())
