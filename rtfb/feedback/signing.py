"""Signed feedback messages: only the session's publisher can drive a display.

A session signs every message with a per-session secret key: the publisher appends a third
ZeroMQ frame, the HMAC-SHA256 tag of the topic and the JSON payload (``docs/
feedback_messages.md``, "Signatures"). A subscriber that has the key (the session writes it
to a file readable by its owner only, see :func:`default_key_path`) calls
:func:`verify_message` (or a :class:`MessageVerifier`, which re-reads the key file when a new
session rotated it) and drops anything else: a program that binds the feedback port before
the session, or publishes on it otherwise, cannot change what the participant sees.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._utils.keys import default_key_dir, load_key
from ..exceptions import AuthenticationError
from .messages import MessageError
from .wire import decode

__all__ = ["MessageVerifier", "SignatureError", "default_key_path", "message_tag",
           "sign_frames", "verify_message"]

_CONTEXT = b"rtfb feedback message v1\0"
TAG_BYTES = 32


class SignatureError(MessageError):
    """A message has no valid signature (unsigned, forged, or signed with another key)."""


def message_tag(key: bytes, topic: bytes, payload: bytes) -> bytes:
    """HMAC-SHA256 tag of one message (topic and payload, length-prefixed)."""
    mac = hmac.new(key, _CONTEXT, hashlib.sha256)
    mac.update(len(topic).to_bytes(4, "big"))
    mac.update(topic)
    mac.update(payload)
    return mac.digest()


def sign_frames(frames: Sequence[bytes], key: bytes) -> list[bytes]:
    """Return ``[topic, payload, tag]`` for the frames ``[topic, payload]`` of a message."""
    topic, payload = (bytes(f) for f in frames)
    return [topic, payload, message_tag(key, topic, payload)]


def verify_message(frames: Sequence[bytes], key: bytes | None) -> tuple[str, dict[str, Any]]:
    """Check the signature of a received message, then decode and validate it.

    Parameters
    ----------
    frames : sequence of bytes
        ``[topic, payload, tag]`` as received from a SUB socket.
    key : bytes | None
        The session's key. ``None`` skips the signature check (the tag frame, if any, is
        ignored): for tools that only read, never for a participant display.

    Returns
    -------
    topic : str
    message : dict
        As :func:`rtfb.feedback.wire.decode`.

    Raises
    ------
    SignatureError
        No tag, or a tag that does not match (checked in constant time).
    MessageError
        The message itself is invalid.
    """
    frames = [bytes(f) for f in frames]
    if key is None:
        return decode(frames[:2] if len(frames) == 3 else frames)
    if len(frames) != 3:
        raise SignatureError(f"unsigned message ({len(frames)} frame(s), expected topic, "
                             f"JSON and signature)")
    topic, payload, tag = frames
    if not hmac.compare_digest(tag, message_tag(key, topic, payload)):
        raise SignatureError("bad signature (not from this session's publisher)")
    return decode([topic, payload])


def default_key_path(address: str) -> Path:
    """Key file of the session publishing on ``address`` (``rtfb run`` writes it).

    ``<key dir>/feedback-<address>.key`` with the address's punctuation replaced, in
    ``$RTFB_KEY_DIR`` or ``~/.rtfb/keys``; ``rtfb display --address ADDRESS`` reads it.
    """
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", address).strip("_")
    return default_key_dir() / f"feedback-{slug}.key"


class MessageVerifier:
    """Verify messages with a key, or with the key held by a file that may change.

    Parameters
    ----------
    key : bytes | str | os.PathLike | None
        The key; or its file, read when first needed and again whenever a message fails
        and the file changed (a new session writes a new key); ``None``: no check.

    Attributes
    ----------
    n_rejected : int
        Messages refused (bad or missing signature, no key file yet).
    """

    def __init__(self, key: bytes | str | os.PathLike | None):
        self.path: Path | None = None
        self._key: bytes | None = None
        if isinstance(key, bytes | bytearray):
            self._key = bytes(key)
        elif key is not None:
            self.path = Path(key)
        self._stamp: tuple | None = None
        self.n_rejected = 0

    @property
    def checks(self) -> bool:
        """Whether signatures are checked."""
        return self.path is not None or self._key is not None

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> bool:
        """Load the key file if it changed; return whether a (new) key was loaded."""
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            key = load_key(self.path)
        except AuthenticationError as err:
            raise SignatureError(str(err)) from None
        self._stamp = stamp
        changed = key != self._key
        self._key = key
        return changed

    def verify(self, frames: Sequence[bytes]) -> tuple[str, dict[str, Any]]:
        """Verify and decode one message (see :func:`verify_message`)."""
        try:
            if not self.checks:
                return verify_message(frames, None)
            if self.path is not None and self._key is None:
                self._reload()
                if self._key is None:
                    raise SignatureError(f"no key yet: waiting for the session to write "
                                         f"{self.path}")
            try:
                return verify_message(frames, self._key)
            except SignatureError:
                if self.path is not None and self._reload():
                    return verify_message(frames, self._key)
                raise
        except SignatureError:
            self.n_rejected += 1
            raise
