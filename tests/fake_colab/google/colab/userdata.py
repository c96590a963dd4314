"""Colab's Secrets with none set: ``get`` raises ``SecretNotFoundError`` like a fresh account."""

from __future__ import annotations


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


class TimeoutException(Exception):
    pass


def get(key: str) -> str:
    raise SecretNotFoundError(f"Secret {key} does not exist.")
