"""Secret redaction: `redact` is the only way a config (or anything derived from it) leaves a process, into the store,
runs/<id>/config.yaml, runs/<id>/plan.json, W&B and log lines. Redacted: values under secret-looking keys anywhere,
passwords inside URLs, and the values of the credential variables below wherever they appear."""
from __future__ import annotations

import logging
import os
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


# Credentials users export for the libraries dialsum drives; their values never appear in anything dialsum writes.
SECRET_ENV_VARS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact_text(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}\2", text)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4 and value in text:
            text = text.replace(value, REDACTED)
    return text


def redact(obj: Any) -> Any:
    """A copy of `obj` with values under secret-looking keys and passwords inside URLs replaced by '***'."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


class RedactingFilter(logging.Filter):
    """On a handler: the formatted message of every record goes through `redact_text` (errors quoting a store URI or a
    callback's arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_logging() -> None:
    """Attach `RedactingFilter` to every handler of the root logger (call after logging is configured)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# ---------------------------------------------------------------------------------------------------- the secrets channel
# What `redact` takes out of a config, by where it was, so the one process that needs the real values (a rank) gets
# them back without a file: engine/plan.py carries them in its SECRETS_ENV.

def _redacted_leaf(key: Any, value: Any) -> Any:
    return REDACTED if is_secret_key(str(key)) and value not in (None, "") else redact(value)


def _children(node: Any):
    if isinstance(node, dict):
        return node.items()
    if isinstance(node, list):
        return enumerate(node)
    return ()


def secret_values(config: Any, path: tuple = ()) -> list[list]:
    """[[key path, real value], ...] for every value `redact` would change, the outermost one of each."""
    found = []
    for key, value in _children(config):
        if _redacted_leaf(key, value) == value:
            continue
        if isinstance(value, (dict, list)) and not is_secret_key(str(key)):
            found += secret_values(value, (*path, key))
        else:
            found.append([[*path, key], value])
    return found


def restore_secrets(config: Any, secrets: list[list]) -> Any:
    """`config` (redacted) with each secret put back where its redacted form stands; a copy."""
    import copy

    config = copy.deepcopy(config)
    for path, value in secrets:
        node = config
        try:
            for key in path[:-1]:
                node = node[key]
            if node[path[-1]] == _redacted_leaf(path[-1], value):
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # a key this config does not have: a secret of another config
    return config


def redacted_paths(config: Any, path: tuple = ()) -> list[str]:
    """Dotted paths of values that still read as redacted: '***' under a secret key, or a URL password '***'."""
    found = []
    for key, value in _children(config):
        here = (*path, key)
        if isinstance(value, str) and ((value == REDACTED and is_secret_key(str(key)))
                                       or f":{REDACTED}@" in value and _URL_PASSWORD.search(value)):
            found.append(".".join(map(str, here)))
        else:
            found += redacted_paths(value, here)
    return found
