"""A real HTTP server on loopback for yt-dlp tests: serves files, 404s, and resets connections."""
from __future__ import annotations

import socket
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class VideoServer:
    """`/files/<name>` serves a file; `/flaky/<n>/<name>` resets the first n connections for that
    path, then serves it; `/missing.mp4` is a 404. `hits[path]` counts requests."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(server.root), **kw)

            def log_message(self, *args):  # keep test output clean
                pass

            def _route(self) -> str | None:
                path = self.path.split("?")[0]
                with server._lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                    count = server.hits[path]
                parts = path.strip("/").split("/")
                if parts[0] == "flaky" and len(parts) == 3:
                    if count <= int(parts[1]):
                        # RST instead of FIN: the client sees "connection reset by peer".
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        return None
                    return "/" + parts[2]
                if parts[0] == "files" and len(parts) == 2:
                    return "/" + parts[1]
                return path

            def do_GET(self):
                routed = self._route()
                if routed is None:
                    return
                self.path = routed
                header = self.headers.get("Range", "")
                if header.startswith("bytes="):
                    self._send_range(header)
                else:
                    super().do_GET()

            def _send_range(self, header: str) -> None:
                # Byte ranges as real video hosts serve them (ffmpeg seeks with them).
                file = Path(self.translate_path(self.path))
                if not file.is_file():
                    self.send_error(404)
                    return
                size = file.stat().st_size
                first, _, last = header[len("bytes="):].split(",")[0].partition("-")
                start = int(first) if first else max(0, size - int(last))
                end = min(int(last), size - 1) if (first and last) else size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                with open(file, "rb") as f:
                    f.seek(start)
                    remaining = end - start + 1
                    while remaining > 0:
                        chunk = f.read(min(1 << 16, remaining))
                        if not chunk:
                            break
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        remaining -= len(chunk)

            def do_HEAD(self):
                routed = self._route()
                if routed is None:
                    return
                self.path = routed
                super().do_HEAD()

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients hanging up early is normal here
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "VideoServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
