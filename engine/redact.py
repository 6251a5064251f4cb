"""Secret redaction for everything the store keeps (configs, plans, environments, events, metadata, errors)."""
from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# A secret-looking key word, as a whole word of a snake/kebab/dotted/camelCase key: `hf_token`, `WANDB_API_KEY`,
# `apiKey`, `db_password`, `client_secret` match; `max_new_tokens`, `tokenizer`, `speaker_tokens`, `pad_token_id`
# do not.
_SECRET_KEY = re.compile(r"(?:^|[^a-z])(?:token(?!_ids?$)|secrets?|passwords?|passwd|api_?key|apikey)(?:$|[^a-z])")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
# The password of a URL's user-info: scheme://user:PASS@host.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+(@)")


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(_CAMEL.sub(r"\1_\2", str(key)).lower()))


def redact_text(text: str) -> str:
    return _URL_PASSWORD.sub(rf"\1{REDACTED}\2", text)


def redact(obj: Any) -> Any:
    """A copy of `obj` with values under secret-looking keys and passwords inside URLs replaced by '***'."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
