"""A fault-injection TCP proxy for tests: partitions, resets, refusals and latency on demand.

:class:`FaultProxy` listens on a private 127.0.0.1 port and forwards every connection to a
target (usually a :class:`tests.helpers.servers.RedisServer`). A test points its client at the proxy
and then breaks the network between them on purpose:

* :meth:`FaultProxy.stall` -- a partition: connections stay open, nothing gets through;
  :meth:`FaultProxy.passthrough` heals it and the held bytes are delivered, in order.
* :meth:`FaultProxy.reset` -- every open connection gets a TCP RST, now.
* :meth:`FaultProxy.refuse` -- new connections are reset as soon as they are accepted.
* :meth:`FaultProxy.latency` -- every chunk is delayed, in both directions.

One background thread runs a ``selectors`` loop and owns every socket. The public methods hand
their change to that thread and wait until it is applied, so when ``stall()`` returns no
further byte is forwarded, and when ``reset()`` returns the connections are already gone.
Stdlib only; nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

__all__ = ["FaultProxy", "Mode", "proxy_for"]

HOST = "127.0.0.1"
CHUNK_SIZE = 65536
MAX_BUFFERED = 4 * 1024 * 1024  # per direction: stop reading a side above this (backpressure)
COMMAND_TIMEOUT = 2.0  # seconds a caller waits for the loop to apply a change
JOIN_TIMEOUT = 1.0  # seconds close() waits for the loop thread
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN
_CONNECT_PENDING = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN})

Mode = Literal["pass", "stall", "refuse"]
End = Literal["fin", "rst"]


class Target(Protocol):
    """Anything with a host and a port, e.g. :class:`tests.helpers.servers.RedisServer`."""

    host: str
    port: int


def _close_with_rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the socket may already be dead; close() still runs
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


class _Side:
    """One socket of a pair, with how the stream read from it ended (None while open)."""

    __slots__ = ("ended", "events", "handler", "sock")

    def __init__(self, sock: socket.socket, handler: Callable[[int], None]) -> None:
        self.sock = sock
        self.handler = handler  # selector data: called with the ready event mask
        self.ended: End | None = None
        self.events = 0  # what the selector watches; 0 means not registered


class _Flow:
    """Bytes read from one side and not yet written to the other, oldest first.

    Each chunk carries the monotonic time it may be written (read time + latency); chunks
    are only ever written from the head, so a change of latency never reorders the stream.
    """

    __slots__ = ("blocked", "chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes | memoryview]] = deque()
        self.size = 0
        self.blocked = False  # the last send() would have blocked: wait for EVENT_WRITE

    def append(self, due: float, data: bytes) -> None:
        self.chunks.append((due, data))
        self.size += len(data)

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0
        self.blocked = False


class _Pair:
    """A client connection and its upstream connection (None until the proxy dials)."""

    __slots__ = ("client", "closed", "connecting", "to_client", "to_upstream", "upstream")

    def __init__(self, sock: socket.socket, on_client: Callable[[_Pair, int], None]) -> None:
        self.client = _Side(sock, lambda mask: on_client(self, mask))
        self.upstream: _Side | None = None
        self.connecting = False
        self.closed = False
        self.to_upstream = _Flow()
        self.to_client = _Flow()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose forwarding can be broken on demand.

    The listening socket is bound in the constructor (so :attr:`port` is known at once) and
    released by :meth:`close`, which must be called even if :meth:`start` never was; prefer
    :func:`proxy_for` or ``with FaultProxy(...).start() as proxy:``.

    Args:
        target_host: host to forward to.
        target_port: port to forward to; :meth:`retarget` changes it for new connections.

    Raises:
        OSError: the listening socket could not be created.
    """

    host = HOST

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._mode: Mode = "pass"
        self._latency = 0.0
        self._pairs: list[_Pair] = []
        self._commands: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._lock = threading.Condition()  # guards the fields below; notified on changes
        self._accepted = 0
        self._open = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False  # set by close(), read by the loop

        with contextlib.ExitStack() as on_error:
            self._selector = selectors.DefaultSelector()
            on_error.callback(self._selector.close)
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            on_error.callback(self._listener.close)
            self._listener.bind((HOST, 0))
            self._listener.listen(128)
            self._listener.setblocking(False)
            self._wake_reader, self._wake_writer = socket.socketpair()
            on_error.callback(self._wake_reader.close)
            on_error.callback(self._wake_writer.close)
            self._wake_reader.setblocking(False)
            self._wake_writer.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
            self._selector.register(self._wake_reader, selectors.EVENT_READ, self._on_wake)
            on_error.pop_all()
        self.port: int = self._listener.getsockname()[1]

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.address} -> {self.target_host}:{self.target_port} "
            f"mode={self._mode} connections={self.connections}>"
        )

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public API --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, the form DRAGONFLY_ADDRESSES takes."""
        return f"{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        """``"pass"``, ``"stall"`` or ``"refuse"``."""
        return self._mode

    @property
    def connections(self) -> int:
        """Client connections open right now (a refused connection never counts)."""
        with self._lock:
            return self._open

    @property
    def accepted(self) -> int:
        """Client connections accepted since the proxy was created, refused ones included."""
        with self._lock:
            return self._accepted

    def wait_connections(self, count: int, timeout: float = 1.0) -> bool:
        """Wait until exactly ``count`` client connections are open.

        Closing is asynchronous when a peer hangs up, so tests wait on this instead of sleeping.

        Returns:
            True if the count was reached, False on timeout.
        """
        with self._lock:
            return self._lock.wait_for(lambda: self._open == count, timeout)

    def start(self) -> FaultProxy:
        """Start the forwarding thread; returns self. Calling it again does nothing.

        Raises:
            RuntimeError: the proxy is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"FaultProxy-{self.port}", daemon=True
                )
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close every socket, the listener included. Idempotent.

        Open connections are closed normally (FIN); afterwards the port refuses connections.

        Raises:
            RuntimeError: the thread did not stop within a second (a bug in the loop).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            self._shutdown()
            return
        self._stopping = True
        self._wake()
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{self!r}: forwarding thread did not stop")

    def passthrough(self) -> None:
        """Forward both ways (the default); connections stalled so far resume, bytes in order."""
        self._apply(lambda: self._set_mode("pass"))

    def stall(self) -> None:
        """Forward nothing either way until :meth:`passthrough`: a network partition.

        New connections are still accepted and everything they send is held; existing ones
        stop too. A peer hanging up is held as well, so the other side notices nothing.
        """
        self._apply(lambda: self._set_mode("stall"))

    def reset(self) -> None:
        """Send RST on every open connection (both sides) now; new connections pass."""

        def action() -> None:
            self._set_mode("pass")
            self._reset_all()

        self._apply(action)

    def refuse(self) -> None:
        """Reset open connections, and reset each new one as soon as it is accepted."""

        def action() -> None:
            self._set_mode("refuse")
            self._reset_all()

        self._apply(action)

    def latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by ``seconds`` in each direction; 0 removes the delay.

        Order is kept: a chunk is never written before the chunks read ahead of it.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        value = float(seconds)

        def action() -> None:
            self._latency = value

        self._apply(action)

    def retarget(self, port: int) -> None:
        """Forward connections dialled from now on to ``port``; open ones keep their target."""

        def action() -> None:
            self.target_port = port

        self._apply(action)

    # -- calls into the loop -----------------------------------------------------------------

    def _apply(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread and wait for it (directly if not started)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            started = self._thread is not None
        if not started:
            action()  # no thread, no connections: nothing can race with us
            return
        done = threading.Event()
        self._commands.append((action, done))
        self._wake()
        if not done.wait(COMMAND_TIMEOUT):
            raise RuntimeError(f"{self!r}: forwarding thread did not answer")

    def _wake(self) -> None:
        # A full buffer means a wake-up is already pending, which is all we need.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def _on_wake(self, mask: int) -> None:
        with contextlib.suppress(OSError):
            while self._wake_reader.recv(4096):
                pass

    # -- the loop (everything below runs on the forwarding thread) ---------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._select_timeout()):
                    key.data(mask)
                self._run_commands()
                for pair in list(self._pairs):
                    self._pump(pair)
        finally:
            self._shutdown()

    def _run_commands(self) -> None:
        while self._commands:
            action, done = self._commands.popleft()
            try:
                action()
            finally:
                done.set()  # a failing action must not leave its caller waiting

    def _select_timeout(self) -> float | None:
        """Seconds until the next delayed chunk may be written; None if nothing waits."""
        if self._mode == "stall":
            return None
        deadline: float | None = None
        for pair in self._pairs:
            flows = ((pair.to_upstream, self._dialled(pair)), (pair.to_client, pair.client))
            for flow, side in flows:
                if side is None or flow.blocked or not flow.chunks:
                    continue
                due = flow.chunks[0][0]
                deadline = due if deadline is None else min(deadline, due)
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def _shutdown(self) -> None:
        for pair in list(self._pairs):
            self._close_pair(pair, client_rst=False, upstream_rst=False)
        while self._commands:  # callers racing close() return instead of timing out
            self._commands.popleft()[1].set()
        self._selector.close()
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _set_mode(self, mode: Mode) -> None:
        self._mode = mode

    def _reset_all(self) -> None:
        for pair in list(self._pairs):
            self._close_pair(pair, client_rst=True, upstream_rst=True)

    def _on_accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up before we accepted it
                return  # e.g. EMFILE: leave the rest in the backlog
            with self._lock:
                self._accepted += 1
                self._lock.notify_all()
            if self._mode == "refuse":
                _close_with_rst(sock)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pairs.append(_Pair(sock, self._on_client))
            with self._lock:
                self._open += 1
                self._lock.notify_all()
            # _pump() dials upstream (unless stalled) and registers both sockets.

    def _on_client(self, pair: _Pair, mask: int) -> None:
        if not pair.closed and mask & selectors.EVENT_READ:
            self._read(pair.client, pair.to_upstream)
        # EVENT_WRITE only wakes the loop: _pump() writes.

    def _on_upstream(self, pair: _Pair, mask: int) -> None:
        upstream = pair.upstream
        if pair.closed or upstream is None:
            return
        if pair.connecting:
            if mask & selectors.EVENT_WRITE:
                self._finish_connect(pair, upstream)
            return
        if mask & selectors.EVENT_READ:
            self._read(upstream, pair.to_client)

    def _dial(self, pair: _Pair) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        upstream = _Side(sock, lambda mask: self._on_upstream(pair, mask))
        pair.upstream = upstream
        try:
            status = sock.connect_ex((self.target_host, self.target_port))
        except OSError as exc:  # e.g. an unresolvable host
            status = exc.errno or errno.EHOSTUNREACH
        if status in _CONNECT_PENDING:
            pair.connecting = True
        elif status == 0:
            self._connected(upstream)
        else:
            upstream.ended = "rst"  # the client is reset, as if the server refused it

    def _finish_connect(self, pair: _Pair, upstream: _Side) -> None:
        pair.connecting = False
        if upstream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            upstream.ended = "rst"
        else:
            self._connected(upstream)

    @staticmethod
    def _connected(upstream: _Side) -> None:
        with contextlib.suppress(OSError):
            upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read(self, side: _Side, flow: _Flow) -> None:
        try:
            data = side.sock.recv(CHUNK_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            side.ended = "rst"
            return
        if data:
            flow.append(time.monotonic() + self._latency, data)
        else:
            side.ended = "fin"

    @staticmethod
    def _dialled(pair: _Pair) -> _Side | None:
        """The upstream side once its connect() has succeeded, else None."""
        upstream = pair.upstream
        if upstream is None or pair.connecting or upstream.ended == "rst":
            return None
        return upstream

    def _pump(self, pair: _Pair) -> None:
        """Write what is due, dial, close finished pairs and update selector interest."""
        if pair.closed:
            return
        if self._mode != "stall":
            if pair.upstream is None:
                self._dial(pair)
            now = time.monotonic()
            upstream = self._dialled(pair)
            if upstream is not None:
                self._flush(pair.to_upstream, upstream, now)
            self._flush(pair.to_client, pair.client, now)
            # A stream that ended is passed on once everything read before its end is written.
            # While stalled this waits too: a hang-up must not cross a partition either.
            upstream_end = pair.upstream.ended if pair.upstream is not None else None
            if upstream_end is not None and not pair.to_client.chunks:
                self._close_pair(pair, client_rst=upstream_end == "rst", upstream_rst=False)
                return
            client_end = pair.client.ended
            if client_end is not None and not pair.to_upstream.chunks:
                self._close_pair(pair, client_rst=False, upstream_rst=client_end == "rst")
                return
        self._watch(pair)

    def _flush(self, flow: _Flow, dst: _Side, now: float) -> None:
        flow.blocked = False
        while flow.chunks:
            due, chunk = flow.chunks[0]
            if due > now:
                return
            try:
                sent = dst.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                flow.blocked = True
                return
            except OSError:
                dst.ended = "rst"  # the peer is gone; what was meant for it is dropped
                flow.clear()
                return
            flow.size -= sent
            if sent < len(chunk):
                flow.chunks[0] = (due, memoryview(chunk)[sent:])
                flow.blocked = True
                return
            flow.chunks.popleft()

    def _watch(self, pair: _Pair) -> None:
        """Register each socket for exactly the events the loop needs from it now."""
        forwarding = self._mode != "stall"
        client, upstream = pair.client, pair.upstream
        events = 0
        if client.ended is None and pair.to_upstream.size < MAX_BUFFERED:
            events |= selectors.EVENT_READ
        if forwarding and pair.to_client.blocked:
            events |= selectors.EVENT_WRITE
        self._set_events(client, events)
        if upstream is None:
            return
        events = 0
        if pair.connecting:
            events = selectors.EVENT_WRITE
        else:
            if upstream.ended is None and pair.to_client.size < MAX_BUFFERED:
                events |= selectors.EVENT_READ
            if forwarding and pair.to_upstream.blocked:
                events |= selectors.EVENT_WRITE
        self._set_events(upstream, events)

    def _set_events(self, side: _Side, events: int) -> None:
        if events == side.events:
            return
        if side.events == 0:
            self._selector.register(side.sock, events, side.handler)
        elif events == 0:
            self._selector.unregister(side.sock)
        else:
            self._selector.modify(side.sock, events, side.handler)
        side.events = events

    def _close_pair(self, pair: _Pair, *, client_rst: bool, upstream_rst: bool) -> None:
        pair.closed = True
        for side, rst in ((pair.client, client_rst), (pair.upstream, upstream_rst)):
            if side is None:
                continue
            if side.events:
                self._selector.unregister(side.sock)
                side.events = 0
            if rst:
                _close_with_rst(side.sock)
            else:
                side.sock.close()
        self._pairs.remove(pair)
        with self._lock:
            self._open -= 1
            self._lock.notify_all()


@contextlib.contextmanager
def proxy_for(server: Target) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``server``, closed on exit.

    Args:
        server: what to forward to, e.g. a :class:`tests.helpers.servers.RedisServer`.

    Yields:
        The running proxy; point clients at ``proxy.port`` / ``proxy.address``.
    """
    proxy = FaultProxy(server.host, server.port)
    try:
        yield proxy.start()
    finally:
        proxy.close()
