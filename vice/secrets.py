"""Keeping credentials out of what is tracked: params, tags, logged text and config trees.

A key is secret when one of its parts (split at dots, underscores, dashes and camelCase
boundaries, compared case-insensitively) is a secret word: `db.password`, `MLFLOW_TRACKING_TOKEN`,
`AWS_SECRET_ACCESS_KEY`, `apiKey`, `auth.user`. Whole parts only, so counts such as
`tokens_per_step`, `max_tokens` or `tokenizer` stay visible; the price is that a part named
exactly `token` (`mask_token`) is hidden too: a hidden harmless value costs a "***" in the
params, a shown credential cannot be taken back.

Values are replaced by `REDACTED`; `None` and "" are kept, so "not set" stays visible. Text is
cleaned of the current values of secret environment variables and of the passwords in URLs
(`postgresql://user:pw@host/db`). Every function takes `env` (default `os.environ`) so the
result depends only on its arguments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

REDACTED = "***"
MIN_SECRET_CHARS = 4  # shorter env values ("1", "on") would blank out ordinary text
# Env vars that are credentials whatever their names say, besides every AWS_* one.
SECRET_ENV_VARS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD")
# Values that occur in ordinary text and are never credentials (SOME_AUTH=true).
_NOT_SECRET_VALUES = frozenset({"true", "false", "none", "null", "yes", "no", "off"})

# "tokens" is deliberately absent: in this field it counts tokens.
_SECRET_WORDS = frozenset(
    {
        "token",
        "password",
        "passwords",
        "passwd",
        "secret",
        "secrets",
        "apikey",
        "accesskey",
        "privatekey",
        "credential",
        "credentials",
        "auth",
        "authorization",
    }
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key")})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[._\-/\s]+")
# scheme://user:PASSWORD@host; the password ends at the last "@" before the host.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s/]+)@")


def _parts(key: str) -> list[str]:
    return [p for p in _SEPARATORS.split(_CAMEL.sub("_", str(key)).lower()) if p]


def is_secret_key(key: str) -> bool:
    """True when a part of `key` names a credential (see the module docstring)."""
    parts = _parts(key)
    if any(p in _SECRET_WORDS for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in pairwise(parts))


def _is_secret_env(name: str) -> bool:
    return name in SECRET_ENV_VARS or name.startswith("AWS_") or is_secret_key(name)


def _environ() -> dict[str, str]:
    """A copy of the environment. Other threads (MLflow's telemetry) change it while we read:
    iterating os.environ then raises KeyError or RuntimeError, so try again."""
    for _ in range(10):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return {}


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values to hide in text: those of secret env vars, longest first (a value that
    contains another is replaced whole)."""
    env = _environ() if env is None else env
    values = {
        value
        for name, value in env.items()
        if _is_secret_env(name)
        and len(value) >= MIN_SECRET_CHARS
        and value.lower() not in _NOT_SECRET_VALUES
    }
    return sorted(values, key=lambda v: (-len(v), v))


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with secret env values and URL passwords replaced by `REDACTED`."""
    for value in secret_values(env):
        text = text.replace(value, REDACTED)
    return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


def _redact_value(value: Any, secret: bool, env: Mapping[str, str] | None) -> Any:
    if secret and value is not None and value != "":
        return REDACTED
    if isinstance(value, str):
        return redact_text(value, env)
    return value


def redact_mapping(flat: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict:
    """A copy of a flat mapping (`{"tracking.uri": ..., "db.password": ...}`): values of
    secret keys become `REDACTED`, other strings go through `redact_text`."""
    return {k: _redact_value(v, is_secret_key(k), env) for k, v in flat.items()}


def redact_tree(tree: Any, env: Mapping[str, str] | None = None, _secret: bool = False) -> Any:
    """A copy of a nested config (mappings, lists, tuples, scalars) with the same rules.

    Every leaf under a secret key is hidden (`auth: {user: ..., password: ...}` hides both),
    as `redact_mapping` does for the flattened keys (`auth.user` has the part `auth`).
    """
    if isinstance(tree, Mapping):
        return {k: redact_tree(v, env, _secret or is_secret_key(str(k))) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(redact_tree(v, env, _secret) for v in tree)
    return _redact_value(tree, _secret, env)
