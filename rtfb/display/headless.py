"""A display without a screen: subscribes, and records every message and every state.

Used by the tests and by ``rtfb run --simulate``; it behaves like the PsychoPy display
(same :class:`~rtfb.display.state.DisplayState`) but records instead of drawing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rtfb.feedback.messages import DEFAULT_ADDRESS, TOPIC_DISPLAY, MessageError
from rtfb.feedback.signing import MessageVerifier, SignatureError

from .state import DisplayState, Snapshot

__all__ = ["DEFAULT_ADDRESS", "HeadlessDisplay", "Received", "connect_subscriber"]

logger = logging.getLogger("rtfb.display")

@dataclass(frozen=True)
class Received:
    """One message as received.

    Attributes
    ----------
    time : float
        Reception time (unix s); ``time - message["time_published"]`` is the transport
        latency when both ends share a clock.
    topic : str
        ``"feedback"`` or ``"status"``.
    message : dict
        The decoded message.
    """

    time: float
    topic: str
    message: dict[str, Any]


def connect_subscriber(ctx: zmq.Context, address: str) -> zmq.Socket:
    """Return a SUB socket connected to ``address`` and subscribed to every topic.

    One subscription to everything (rather than one per topic) makes the publisher re-send
    its cached status and feedback messages in the order they were first sent; a second one,
    to ``TOPIC_DISPLAY`` (on which nothing is sent), tells the publisher that a participant
    display is connected.
    """
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if "[" in address:
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_DISPLAY)
        sock.connect(address)
    except BaseException:
        sock.close(linger=0)  # or the context could never terminate
        raise
    return sock


class HeadlessDisplay:
    """Subscriber thread recording the messages received and the states it would show.

    Parameters
    ----------
    address : str
        Publisher endpoint to connect to.
    timeout : float | None
        Signal-lost timeout of the :class:`DisplayState` (None: 3 TR, else 5 s).
    poll_interval : float
        Seconds between timeout checks when no message arrives.
    max_records : int | None
        Keep only the last ``max_records`` messages and snapshots (None: all).
    on_snapshot : callable | None
        ``on_snapshot(snapshot)`` called in the thread for every new snapshot.
    key : bytes | str | os.PathLike | MessageVerifier | None
        The session's key, or its key file: only messages signed with it are applied
        (:class:`~rtfb.feedback.signing.MessageVerifier`). ``None`` applies unsigned ones.

    Attributes
    ----------
    n_invalid : int
        Messages that failed validation (logged and skipped).
    n_rejected : int
        Messages refused because their signature is missing or wrong.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float | None = None, *,
                 poll_interval: float = 0.02, max_records: int | None = None,
                 on_snapshot: Callable[[Snapshot], Any] | None = None, key: Any = None):
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must be a ZeroMQ endpoint such as "
                             f"tcp://127.0.0.1:5556, got {address!r}.")
        self.address = address
        self.state = DisplayState(timeout=timeout)
        self.poll_interval = float(poll_interval)
        self.on_snapshot = on_snapshot
        self._messages: deque[Received] = deque(maxlen=max_records)
        self._snapshots: deque[Snapshot] = deque(maxlen=max_records)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.n_invalid = 0
        self.verifier = key if isinstance(key, MessageVerifier) else MessageVerifier(key)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HeadlessDisplay:
        """Connect and start the subscriber thread; returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("the display was already started (create a new one).")
        self._thread = threading.Thread(target=self._run, name="rtfb-headless-display",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> HeadlessDisplay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ records

    @property
    def n_rejected(self) -> int:
        """Messages refused for a missing or wrong signature."""
        return self.verifier.n_rejected

    @property
    def messages(self) -> list[Received]:
        """Messages received so far (a copy), oldest first."""
        with self._cond:
            return list(self._messages)

    @property
    def snapshots(self) -> list[Snapshot]:
        """States shown so far (a copy), oldest first; a new one whenever it changes."""
        with self._cond:
            return list(self._snapshots)

    @property
    def latest(self) -> Snapshot | None:
        """The state shown now (None before the thread started)."""
        with self._cond:
            return self._snapshots[-1] if self._snapshots else None

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float = 5.0) -> Snapshot:
        """Block until ``predicate(latest snapshot)`` is true and return that snapshot.

        Raises
        ------
        TimeoutError
            When it is still false after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snap = self._snapshots[-1] if self._snapshots else None
                if snap is not None and predicate(snap):
                    return snap
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"display state not reached in {timeout} s; "
                                       f"last state: {snap}")
                self._cond.wait(remaining)

    def wait_for_message(self, predicate: Callable[[Received], bool],
                         timeout: float = 5.0) -> Received:
        """Block until a received message satisfies ``predicate``; return it.

        Raises
        ------
        TimeoutError
            When none does after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self._messages:
                    if predicate(rec):
                        return rec
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message in {timeout} s "
                                       f"({len(self._messages)} received).")
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ thread

    def _record(self, snap: Snapshot, received: Received | None = None) -> None:
        with self._cond:
            if received is not None:
                self._messages.append(received)
            new = not self._snapshots or self._snapshots[-1] != snap
            if new:
                self._snapshots.append(snap)
            self._cond.notify_all()
        if new and self.on_snapshot is not None:
            try:
                self.on_snapshot(snap)
            except Exception:
                logger.exception("on_snapshot callback failed")

    def _run(self) -> None:
        ctx = zmq.Context()
        try:
            sock = connect_subscriber(ctx, self.address)
        except Exception as err:  # reported by start()
            self._error = err
            ctx.term()
            self._ready.set()
            return
        self._record(self.state.snapshot())
        self._ready.set()
        poll_ms = max(1, int(self.poll_interval * 1000))
        try:
            while not self._stop.is_set():
                if sock.poll(poll_ms, zmq.POLLIN):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        received_at = time.time()
                        try:
                            topic, message = self.verifier.verify(frames)
                        except SignatureError as err:
                            n = self.verifier.n_rejected
                            if n in (1, 10, 100) or n % 1000 == 0:
                                logger.warning("message refused (%d so far): %s", n, err)
                            continue
                        except MessageError as err:
                            self.n_invalid += 1
                            logger.warning("invalid message ignored: %s", err)
                            continue
                        snap = self.state.update(topic, message)
                        self._record(snap, Received(received_at, topic, message))
                else:
                    self._record(self.state.snapshot())
        finally:
            sock.close(linger=0)
            ctx.term()
