"""Colab's Secrets: ``get`` raises ``SecretNotFoundError`` like a fresh account, unless
``$FAKE_COLAB_SECRETS`` holds a JSON object of the secrets this notebook was granted."""

from __future__ import annotations

import json
import os


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


class TimeoutException(Exception):
    pass


def get(key: str) -> str:
    secrets = json.loads(os.environ.get("FAKE_COLAB_SECRETS") or "{}")
    if key not in secrets:
        raise SecretNotFoundError(f"Secret {key} does not exist.")
    return secrets[key]
