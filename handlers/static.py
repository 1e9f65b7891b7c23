"""The web client's files (``web/``, served at ``/``), compressed and revalidated.

The files are not content-hashed (no build step), so a browser may keep
them but must ask again before using them (``Cache-Control: no-cache``):
the answer is a 304 when its ``ETag`` or ``Last-Modified`` still holds,
and the new file right after a deploy. Text files go out gzipped to
clients that accept it; each file is read, hashed and compressed once per
version of it (its modification time and size), not once per request.
The API (``/v1/...``) is not compressed here: its answers are small and
``no-store`` (see ``handlers.base``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import tornado.web

from handlers.base import BoundedRequestMixin, JsonErrorsMixin

CACHE_CONTROL = "no-cache"
# Types worth compressing (images and fonts are compressed already).
COMPRESSIBLE_TYPES = frozenset({
    "application/javascript", "application/json", "application/manifest+json", "application/xml",
    "image/svg+xml",
})
# Larger files are streamed from disk as they are instead of held in memory.
MAX_ENCODED_BYTES = 4 * 1024 * 1024
GZIP_LEVEL = 9  # once per file version, so the smallest output is worth the time


def compressible(content_type: str) -> bool:
    media_type = content_type.split(";")[0].strip().lower()
    return media_type.startswith("text/") or media_type in COMPRESSIBLE_TYPES


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


@dataclass(frozen=True)
class FileVersion:
    """One version of a web file: its bytes and validator, and its gzip form when that is smaller."""

    stamp: tuple[int, int]  # (mtime in ns, size): a different pair is a different version
    content: bytes
    etag: str
    gzipped: bytes | None
    gzip_etag: str


class FileVersions:
    """The current version of each web file served, computed when first asked for.

    One entry per path (a new version replaces the old one), so it holds at
    most the files of ``web/``. Used from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._versions: dict[str, FileVersion] = {}

    def of(self, path: str, stat: os.stat_result, compress: bool) -> FileVersion | None:
        """The version of ``path`` that ``stat`` describes; None for a file too large to hold."""
        if stat.st_size > MAX_ENCODED_BYTES:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        known = self._versions.get(path)
        if known is not None and known.stamp == stamp:
            return known
        with open(path, "rb") as file:
            content = file.read()
        if len(content) != stat.st_size:
            return None  # being rewritten right now: serve it from disk, uncached
        digest = hashlib.sha256(content).hexdigest()[:32]
        packed = gzip.compress(content, GZIP_LEVEL, mtime=0) if compress else None
        version = FileVersion(
            stamp=stamp,
            content=content,
            etag=f'"{digest}"',
            gzipped=packed if packed is not None and len(packed) < len(content) else None,
            # The gzip form is another representation: a validator of its own.
            gzip_etag=f'"{digest}-gzip"',
        )
        self._versions[path] = version
        return version


FILE_VERSIONS = FileVersions()


@tornado.web.stream_request_body
class StaticHandler(JsonErrorsMixin, BoundedRequestMixin, tornado.web.StaticFileHandler):
    """The web client's files; a missing file is a JSON 404 like any other."""

    _version: FileVersion | None = None
    _gzip = False

    async def get(self, path: str, include_body: bool = True) -> None:
        """Serve a file of ``web/``; a path outside it is not found: nothing says what exists elsewhere."""
        if "\x00" in path:  # the file system cannot even be asked
            raise tornado.web.HTTPError(404)
        try:
            await super().get(path, include_body)
        except tornado.web.HTTPError as error:
            if error.status_code == 403:  # "not in root static directory", "not a file"
                raise tornado.web.HTTPError(404) from None
            raise
        if self.get_status() == 416:
            # An unsatisfiable Range, which Tornado answers itself with an
            # empty text/plain body: the JSON error like any other.
            raise tornado.web.HTTPError(416)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        """Invoked once the path is known to be a file of ``web/``: pick the representation to send."""
        path = super().validate_absolute_path(root, absolute_path)
        if path is None:
            return None
        self.absolute_path = path  # what get_content_type() reads; Tornado sets it too, once this returns
        self._version = FILE_VERSIONS.of(path, os.stat(path), compressible(self.get_content_type()))
        self._gzip = (
            self._version is not None
            and self._version.gzipped is not None
            and accepts_gzip(self.request.headers.get("Accept-Encoding", ""))
            # A range counts bytes of the file itself, as every resuming client expects.
            and not self.request.headers.get("Range")
        )
        return path

    def compute_etag(self) -> str | None:
        if self._version is None:
            return super().compute_etag()
        return self._version.gzip_etag if self._gzip else self._version.etag

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", CACHE_CONTROL)
        # Caches must keep the gzip and the plain answer apart.
        self.set_header("Vary", "Accept-Encoding")
        if self._gzip:
            self.set_header("Content-Encoding", "gzip")

    def get_content_size(self) -> int:
        if self._version is None:
            return super().get_content_size()
        content = self._version.gzipped if self._gzip else self._version.content
        assert content is not None
        return len(content)

    # An instance method here (a class method in Tornado): which bytes go out
    # depends on this request's Accept-Encoding. Tornado calls it only as
    # self.get_content(...) while serving; the ETag comes from compute_etag.
    # The bytes are those of the version the ETag names, even if the file
    # changes on disk meanwhile.
    def get_content(self, abspath: str, start: int | None = None, end: int | None = None) -> Any:  # type: ignore[override]
        if self._version is None:
            return tornado.web.StaticFileHandler.get_content(abspath, start, end)
        content = self._version.gzipped if self._gzip else self._version.content
        assert content is not None
        return content[start:end]
