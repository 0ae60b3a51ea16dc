"""A loopback TCP proxy for fault tests: forwards connections to an upstream address and
can cut them, at once or after a number of client-to-server bytes."""
import select
import socket
import threading


class TcpProxy:
    def __init__(self, upstream):
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._connections = []
        self._cut_after = None     # cut when this many more upstream bytes have passed
        self._cut_every = None     # and then again after every this many
        self.cuts = 0
        self.forwarded = 0         # client -> server bytes, all connections
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, upstream_bytes, repeat=False):
        """Cuts every connection once `upstream_bytes` more bytes went to the server; with
        repeat, again after every `upstream_bytes` more, until stop_cutting()."""
        with self._lock:
            self._cut_after = self.forwarded + upstream_bytes
            self._cut_every = upstream_bytes if repeat else None

    def stop_cutting(self):
        with self._lock:
            self._cut_after = self._cut_every = None

    def cut(self):
        with self._lock:
            connections, self._connections = self._connections, []
            self.cuts += 1
        for pair in connections:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self):
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._connections.append((downstream, upstream))
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()

    def _pump(self, downstream, upstream):
        peers = {downstream: upstream, upstream: downstream}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for source in readable:
                    data = source.recv(1 << 16)
                    if not data:
                        raise OSError("closed")
                    peers[source].sendall(data)
                    if source is downstream:
                        cut = False
                        with self._lock:
                            self.forwarded += len(data)
                            if self._cut_after is not None and self.forwarded >= self._cut_after:
                                self._cut_after = (None if self._cut_every is None
                                                   else self._cut_after + self._cut_every)
                                cut = True
                        if cut:
                            self.cut()
                            return
        except (OSError, ValueError):
            for s in peers:
                try:
                    s.close()
                except OSError:
                    pass
