"""Secret key files shared by the TCP ingest (``--key``) and the feedback channel.

A key file holds 32 random bytes written as 64 hexadecimal characters and a newline; it is
created with mode 0600 (readable by its owner only) and refused when others can read it.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from ..exceptions import AuthenticationError

__all__ = ["KEY_BYTES", "default_key_dir", "ensure_key", "load_key", "write_key"]

KEY_BYTES = 32
_HEX = re.compile(rb"\s*([0-9a-fA-F]{64})\s*")


def default_key_dir() -> Path:
    """Folder of the default key files: ``$RTFB_KEY_DIR``, else ``~/.rtfb/keys``."""
    return Path(os.environ.get("RTFB_KEY_DIR") or Path.home() / ".rtfb" / "keys")


def load_key(path: str | os.PathLike) -> bytes:
    """Read a key file.

    Raises
    ------
    AuthenticationError
        The file is missing, readable by group or others, or not 64 hex characters.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read(1024)
    except FileNotFoundError:
        raise AuthenticationError(f"key file {path} does not exist.") from None
    except OSError as err:
        raise AuthenticationError(f"cannot read key file {path}: "
                                  f"{err.strerror or err}.") from None
    if not stat.S_ISREG(mode):
        raise AuthenticationError(f"key file {path} is not a regular file.")
    if mode & 0o077:
        raise AuthenticationError(f"key file {path} is readable by others (mode "
                                  f"{stat.S_IMODE(mode):04o}); make it private: "
                                  f"chmod 600 {path}")
    match = _HEX.fullmatch(raw)
    if match is None:
        raise AuthenticationError(f"key file {path} does not hold a key (expected 64 "
                                  f"hexadecimal characters).")
    return bytes.fromhex(match.group(1).decode("ascii"))


def write_key(path: str | os.PathLike, key: bytes | None = None) -> bytes:
    """Write ``key`` (default: a new random one) to ``path`` atomically, mode 0600.

    Missing parent folders are created with mode 0700. Returns the key.
    """
    key = secrets.token_bytes(KEY_BYTES) if key is None else bytes(key)
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key has {KEY_BYTES} bytes, got {len(key)}.")
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.hex().encode("ascii") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key


def ensure_key(path: str | os.PathLike) -> tuple[bytes, bool]:
    """Load the key of ``path``, creating the file with a new random key if it is missing.

    Returns
    -------
    key : bytes
    created : bool
        Whether the file was created.
    """
    path = Path(path)
    if not path.exists():
        try:
            return write_key(path), True
        except OSError as err:
            raise AuthenticationError(f"cannot create key file {path}: "
                                      f"{err.strerror or err}.") from None
    return load_key(path), False
