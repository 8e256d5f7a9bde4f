"""Secrets kept in files: ``password_file:`` in the tag map, systemd credentials.

A relative name is looked up in ``$CREDENTIALS_DIRECTORY``, where systemd puts what the unit's
``LoadCredential=`` / ``LoadCredentialEncrypted=`` hand over (readable by the service only, never on disk
in clear for an encrypted credential). The value is the file's first line. Errors name the file, never its content.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.errors import GatewayError

__all__ = ["SecretFileError", "read_secret_file", "secret_path"]


class SecretFileError(GatewayError):
    """A secret file cannot be read."""


def secret_path(name: str | Path) -> Path:
    """``name`` itself if absolute, else under $CREDENTIALS_DIRECTORY when systemd set it, else relative to cwd."""
    path = Path(name)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and credentials:
        return Path(credentials) / path
    return path


def read_secret_file(name: str | Path) -> str:
    path = secret_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"secret file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0] if lines else ""
