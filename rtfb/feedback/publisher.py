"""ZeroMQ publisher of feedback and status messages with a last-value cache.

One thread owns an XPUB socket. :meth:`FeedbackPublisher.publish` only validates the message
and puts it on a queue (it never blocks); the thread stamps ``time_published``, sends, and
calls ``on_sent``. Because the socket is an XPUB with ``XPUB_VERBOSE``, the thread sees every
subscription, including a second subscriber to a topic already subscribed and a display that
restarted: it then re-sends the latest feedback and the latest status message (same bytes,
in the order they were first sent), so a display that joins late shows the current state at
once. Subscribers already connected receive these copies too; they are identical to messages
they already had.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from .._utils.checks import check_int, check_positive_number
from .._utils.net import is_loopback
from .messages import (
    DEFAULT_ADDRESS,
    TOPIC_DISPLAY,
    FeedbackMessage,
    MessageError,
    StatusMessage,
)
from .signing import sign_frames
from .wire import as_message, encode, topic_bytes

__all__ = ["DEFAULT_ADDRESS", "FeedbackPublisher", "check_bind_address"]

logger = logging.getLogger("rtfb.feedback")

_STOP = object()


def check_bind_address(address: str, allow_remote: bool = False) -> str:
    """Return the ZeroMQ endpoint to bind, refusing non-loopback TCP interfaces.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT`` (port ``0`` or ``*`` picks a free port), ``ipc://PATH`` or
        ``inproc://NAME``.
    allow_remote : bool
        Allow binding a TCP interface other than the loopback (e.g. ``tcp://*:5556`` to let
        a display on another computer connect).

    Returns
    -------
    str
        The endpoint, with port ``0`` written as ``*``.
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a string, got {type(address).__name__}.")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"address must look like tcp://127.0.0.1:5556 (or ipc://, "
                         f"inproc://), got {address!r}.")
    if scheme != "tcp":
        return address
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not (port == "*" or (port.isdigit() and int(port) < 65536)):
        raise ValueError(f"address must be tcp://HOST:PORT with a port number (0 or * for a "
                         f"free port), got {address!r}.")
    if port == "0":
        port = "*"
    if not allow_remote and not is_loopback(host):
        raise ValueError(f"refusing to bind {address!r}: it is not a loopback address, so "
                         "other computers could connect. Use tcp://127.0.0.1:PORT, or pass "
                         "allow_remote=True to publish on the network on purpose.")
    return f"tcp://{host}:{port}"


def _withheld(msg: FeedbackMessage) -> FeedbackMessage:
    """``msg`` too late to be shown: no value, flagged ``stale`` (the display keeps its
    last state and marks that the session is catching up).
    """
    flags = tuple(msg.flags) + (() if "stale" in msg.flags else ("stale",))
    return dataclasses.replace(msg, value=None, flags=flags)


class FeedbackPublisher:
    """Publish feedback and status messages on a ZeroMQ XPUB socket.

    Parameters
    ----------
    address : str
        Endpoint to bind (default ``tcp://127.0.0.1:5556``; port 0 picks a free port, see
        :attr:`endpoint`). Non-loopback TCP interfaces are refused unless ``allow_remote``.
    session_id : str | None
        Session identifier; every published message must carry it. None generates one
        (:attr:`session_id`).
    allow_remote : bool
        Allow binding a non-loopback interface.
    key : bytes | None
        Secret key of the session: every message gets a third frame, its HMAC-SHA256 tag
        (:func:`rtfb.feedback.signing.sign_frames`), which displays verify. ``None`` sends
        unsigned messages.
    on_sent : callable | None
        ``on_sent(topic, message)`` called in the publisher thread after each message is
        sent for the first time, with the topic as str and the message as the dict exactly
        as serialised (``time_published`` included). Re-sends to late joiners are not
        reported (they repeat a reported message byte for byte). Keep it quick: it delays
        the next message. Exceptions are logged, not raised.
    on_display : callable | None
        ``on_display(connected)`` called in the publisher thread when the first participant
        display subscribes (True) and when the last one leaves (False); displays subscribe
        to ``TOPIC_DISPLAY`` besides the messages (the dashboard does not).
    sndhwm : int
        Messages queued per subscriber before ZeroMQ drops for that subscriber (a stalled
        display never blocks the publisher).
    linger : float
        Seconds :meth:`stop` lets ZeroMQ deliver pending messages before closing.
    max_queue : int
        Messages waiting for the thread before :meth:`publish` drops (and counts) new ones.

    Attributes
    ----------
    stats : dict
        Counters: ``published`` (accepted by :meth:`publish`), ``sent``, ``resent`` (to late
        joiners), ``subscriptions`` (subscribe frames seen), ``displays`` (participant
        displays that subscribed), ``dropped`` (queue full or ZeroMQ refused), ``withheld``
        (feedback sent after its ``deadline``, value withheld), ``callback_errors``.
    display_connected : bool
        Whether a participant display is connected now.

    Notes
    -----
    ``time_published`` is stamped just before sending and increases strictly from one
    message to the next (by at least 1 µs), so displays can order messages by it.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, session_id: str | None = None, *,
                 allow_remote: bool = False, key: bytes | None = None,
                 on_sent: Callable[[str, dict[str, Any]], Any] | None = None,
                 on_display: Callable[[bool], Any] | None = None,
                 sndhwm: int = 1000, linger: float = 1.0, max_queue: int = 10000):
        self.address = check_bind_address(address, allow_remote)
        if session_id is None:
            session_id = uuid.uuid4().hex
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty string, got {session_id!r}.")
        self.session_id = session_id
        if key is not None and (not isinstance(key, bytes) or len(key) < 16):
            raise ValueError("key must be bytes of length >= 16 (see rtfb._utils.keys).")
        self.key = key
        if on_sent is not None and not callable(on_sent):
            raise TypeError("on_sent must be callable or None.")
        self.on_sent = on_sent
        if on_display is not None and not callable(on_display):
            raise TypeError("on_display must be callable or None.")
        self.on_display = on_display
        self.display_connected = False
        self.sndhwm = check_int(sndhwm, "sndhwm", minimum=1)
        self.linger = float(linger) if linger == 0 else check_positive_number(linger, "linger")
        self._queue: queue.Queue = queue.Queue(maxsize=check_int(max_queue, "max_queue", 1))
        self.stats = {"published": 0, "sent": 0, "resent": 0, "subscriptions": 0,
                      "displays": 0, "dropped": 0, "withheld": 0, "callback_errors": 0}
        self._stats_lock = threading.Lock()
        self._subscribed = threading.Condition(self._stats_lock)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._endpoint: str | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = False
        # last-value cache: topic -> (sequence number, frames); touched by the thread only
        self._cache: dict[bytes, tuple[int, list[bytes]]] = {}
        self._seq = 0
        self._last_stamp = 0.0
        self._clock = time.time

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """The bound endpoint (actual port when bound to port 0); after :meth:`start`."""
        if self._endpoint is None:
            raise RuntimeError("the publisher is not started.")
        return self._endpoint

    @property
    def last_endpoint(self) -> str:
        """Alias of :attr:`endpoint` (ZeroMQ's ``LAST_ENDPOINT``)."""
        return self.endpoint

    @property
    def running(self) -> bool:
        """Whether the publisher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FeedbackPublisher:
        """Bind the socket in the publisher thread; returns ``self``.

        Raises
        ------
        zmq.ZMQError
            When the address cannot be bound (e.g. already in use).
        """
        if self._thread is not None:
            raise RuntimeError("the publisher was already started (create a new one).")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="rtfb-feedback-publisher",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._close_wake()
            raise self._startup_error
        logger.info("publishing feedback on %s", self._endpoint)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Send what is queued, close the socket and end the thread (bounded wait).

        Parameters
        ----------
        timeout : float | None
            Longest wait for the thread; default ``linger + 2`` s.
        """
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # the thread will still see _stopping
            pass
        self._wake()
        self._thread.join(self.linger + 2.0 if timeout is None else timeout)
        if self._thread.is_alive():
            logger.warning("the feedback publisher thread did not end in time")
        else:
            self._close_wake()

    def __enter__(self) -> FeedbackPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: bytes | str,
                message: FeedbackMessage | StatusMessage | Mapping[str, Any], *,
                deadline: float | None = None) -> bool:
        """Queue one message for sending; never blocks.

        Parameters
        ----------
        topic : bytes | str
            ``b"feedback"`` or ``b"status"`` (must match the message type).
        message : FeedbackMessage | StatusMessage | dict
            The message; ``time_published`` is set when it is sent.
        deadline : float | None
            Feedback messages: the latest send time (epoch s) at which their value may
            still be shown. A message sent later (the publisher's thread was starved, a
            queue built up) goes out with its value withheld (``value`` null, flag
            ``stale``), so a late value is never shown as fresh; ``on_sent`` sees the
            message as sent.

        Returns
        -------
        bool
            True when queued, False when dropped because the queue is full.

        Raises
        ------
        MessageError
            Invalid message, topic mismatch or another session's id.
        RuntimeError
            The publisher is not running.
        """
        topic_b = topic_bytes(topic)
        msg = as_message(message)
        if msg.topic != topic_b:
            raise MessageError(f"a {msg.type} message cannot be sent on topic {topic_b!r}.")
        if msg.session_id != self.session_id:
            raise MessageError(f"message of session {msg.session_id!r} sent through the "
                               f"publisher of session {self.session_id!r}.")
        if not self.running or self._stopping:
            raise RuntimeError("the publisher is not running (call start()).")
        try:
            self._queue.put_nowait((topic_b, msg, deadline))
        except queue.Full:
            self._count("dropped")
            logger.warning("feedback publisher queue full: message dropped")
            return False
        self._count("published")
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # buffer full: the thread is awake anyway
            pass

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n
            if key in ("subscriptions", "displays"):
                self._subscribed.notify_all()

    def _display_event(self, subscribed: bool) -> None:
        """A participant display subscribed (each one), or the last one left."""
        if subscribed:
            self._count("displays")
        changed = subscribed != self.display_connected
        self.display_connected = subscribed
        if changed and self.on_display is not None:
            try:
                self.on_display(subscribed)
            except Exception:
                self._count("callback_errors")
                logger.exception("on_display callback failed")

    def wait_for_displays(self, n: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``n`` participant displays subscribed in all (see ``TOPIC_DISPLAY``).

        Parameters
        ----------
        n : int
            Display subscriptions to wait for (each display subscribes once).
        timeout : float | None
            Longest wait in seconds (None: no limit).

        Returns
        -------
        bool
            Whether ``n`` displays subscribed before the timeout.
        """
        return self._wait_for_count("displays", n, timeout)

    def wait_for_subscriptions(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` subscribe frames were seen in all (any subscriber).

        Parameters
        ----------
        n : int
            Subscriptions to wait for (a subscriber to every topic subscribes once; a
            display's ``TOPIC_DISPLAY`` subscription is counted in ``displays`` instead).
        timeout : float | None
            Longest wait in seconds (None: no limit).

        Returns
        -------
        bool
            Whether ``n`` subscriptions were seen before the timeout.
        """
        return self._wait_for_count("subscriptions", n, timeout)

    def _wait_for_count(self, key: str, n: int, timeout: float | None) -> bool:
        n = check_int(n, "n", minimum=0)
        with self._subscribed:
            return self._subscribed.wait_for(lambda: self.stats[key] >= n, timeout)

    def _close_wake(self) -> None:
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            sock.setsockopt(zmq.SNDHWM, self.sndhwm)
            sock.setsockopt(zmq.LINGER, int(self.linger * 1000))
            sock.setsockopt(zmq.SNDTIMEO, 0)
            if "[" in self.address or self.address.count(":") > 2:
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(self.address)
            self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as err:  # reported by start()
            self._startup_error = err
            sock.close(linger=0)
            ctx.term()
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            stopping = False
            while not stopping:
                events = dict(poller.poll(1000))
                if events.get(sock):
                    self._handle_subscriptions(sock)
                if self._wake_r in events:
                    self._drain_wake()
                stopping = self._send_queued(sock) or (self._stopping and self._queue.empty())
        except Exception:  # pragma: no cover - logged, the session sees running == False
            logger.exception("feedback publisher thread failed")
        finally:
            sock.close(linger=int(self.linger * 1000))
            ctx.term()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _send_queued(self, sock: zmq.Socket) -> bool:
        """Send every queued message; return True when the stop marker was reached."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            topic, msg, deadline = item
            # strictly increasing, even if the wall clock steps back: displays order by it
            self._last_stamp = max(self._clock(), self._last_stamp + 1e-6)
            if (deadline is not None and self._last_stamp > deadline
                    and isinstance(msg, FeedbackMessage) and msg.value is not None):
                msg = _withheld(msg)
                self._count("withheld")
            frames = encode(topic, msg, time_published=self._last_stamp)
            if self.key is not None:
                frames = sign_frames(frames, self.key)
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                self._count("dropped")
                continue
            self._seq += 1
            self._cache[topic] = (self._seq, frames)
            self._count("sent")
            if self.on_sent is not None:
                self._notify(frames)

    def _notify(self, frames: list[bytes]) -> None:
        try:
            self.on_sent(frames[0].decode(), json.loads(frames[1]))
        except Exception:
            self._count("callback_errors")
            logger.exception("on_sent callback failed")

    def _handle_subscriptions(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[1:] == TOPIC_DISPLAY and frame[:1] in (b"\x00", b"\x01"):
                self._display_event(frame[0] == 1)
                continue
            if not frame or frame[0] != 1:  # unsubscription or a stray frame
                continue
            prefix = frame[1:]
            self._count("subscriptions")
            cached = sorted((v for t, v in self._cache.items() if t.startswith(prefix)),
                            key=lambda v: v[0])
            for _, frames in cached:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    self._count("resent")
                except zmq.Again:
                    self._count("dropped")
            if cached:
                logger.debug("subscription %r: re-sent %d cached message(s)", prefix,
                             len(cached))

