"""The object-id prefix that the current call's token is limited to ("" = none).

Calls keyed by an upload session (GetUploadSession, AbortUploadSession, Upload) name no object
id in their request, so the auth interceptor cannot check them up front: it sets this for the
call, and the servicer hands it to the node logic, which refuses a session whose object id
lies outside it (`Store._lookup`). A context variable, because the interceptor's wrapper and
the servicer's handler run in the same task. Imports nothing of ours (auth and service both
use it).
"""

from __future__ import annotations

import contextvars

TOKEN_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("mini_oss_token_prefix", default="")


def token_prefix() -> str:
    return TOKEN_PREFIX.get()
