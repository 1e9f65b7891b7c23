"""The web client's files over real HTTP: gzip for those who accept it, validators, and the API left uncached."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest, HTTPResponse

from handlers.static import FileVersions
from tests.helpers import ServerUnderTest

pytestmark = pytest.mark.gen_test

WEB = Path(__file__).resolve().parent.parent / "web"


async def fetch(server: ServerUnderTest, path: str, method: str = "GET", **headers: str) -> HTTPResponse:
    """The answer exactly as sent: the client neither asks for gzip nor unpacks it unless told."""
    request = HTTPRequest(server.base_url + path, method=method, headers=headers, decompress_response=False,
                          request_timeout=30)
    return await server.http.fetch(request, raise_error=False)


@pytest.mark.parametrize("path, file", [("/", "index.html"), ("/app.js", "app.js"), ("/style.css", "style.css")])
async def test_gzip_body_is_the_file(server: ServerUnderTest, path, file):
    response = await fetch(server, path, **{"Accept-Encoding": "gzip, deflate, br"})
    assert response.code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(response.body)
    assert gzip.decompress(response.body) == (WEB / file).read_bytes()
    assert "Accept-Encoding" in response.headers["Vary"]
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("accept", [None, "identity", "gzip;q=0, identity", "br"])
async def test_without_gzip_in_accept_encoding_the_file_is_sent_as_it_is(server: ServerUnderTest, accept):
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    response = await fetch(server, "/app.js", **headers)
    assert response.code == 200
    assert "Content-Encoding" not in response.headers
    assert response.body == (WEB / "app.js").read_bytes()
    assert "Accept-Encoding" in response.headers["Vary"]


@pytest.mark.parametrize("accept", [None, "gzip"])
async def test_etag_and_last_modified_answer_304(server: ServerUnderTest, accept):
    encoding = {"Accept-Encoding": accept} if accept else {}
    first = await fetch(server, "/app.js", **encoding)
    etag, modified = first.headers["Etag"], first.headers["Last-Modified"]
    again = await fetch(server, "/app.js", **encoding, **{"If-None-Match": etag})
    assert again.code == 304 and again.body == b""
    assert again.headers["Etag"] == etag and again.headers["Cache-Control"] == "no-cache"
    since = await fetch(server, "/app.js", **encoding, **{"If-Modified-Since": modified})
    assert since.code == 304
    stale = await fetch(server, "/app.js", **encoding, **{"If-None-Match": '"some-older-version"'})
    assert stale.code == 200 and stale.body == first.body


async def test_the_gzip_and_the_plain_file_have_different_etags(server: ServerUnderTest):
    """A cache that stored one representation must not revalidate it as the other."""
    plain = await fetch(server, "/app.js")
    packed = await fetch(server, "/app.js", **{"Accept-Encoding": "gzip"})
    assert plain.headers["Etag"] != packed.headers["Etag"]
    cross = await fetch(server, "/app.js", **{"Accept-Encoding": "gzip", "If-None-Match": plain.headers["Etag"]})
    assert cross.code == 200 and gzip.decompress(cross.body) == plain.body


async def test_head_and_range(server: ServerUnderTest):
    content = (WEB / "app.js").read_bytes()
    head = await fetch(server, "/app.js", "HEAD", **{"Accept-Encoding": "gzip"})
    assert head.code == 200 and head.body == b"" and head.headers["Content-Encoding"] == "gzip"
    packed = await fetch(server, "/app.js", **{"Accept-Encoding": "gzip"})
    assert int(head.headers["Content-Length"]) == len(packed.body)
    # A range counts the file's own bytes, gzip accepted or not.
    part = await fetch(server, "/app.js", **{"Accept-Encoding": "gzip", "Range": "bytes=10-19"})
    assert part.code == 206 and part.body == content[10:20]
    assert "Content-Encoding" not in part.headers
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(content)}"


async def test_errors_of_the_static_files_stay_json(server: ServerUnderTest):
    missing = await fetch(server, "/no-such-file.js", **{"Accept-Encoding": "gzip"})
    assert missing.code == 404 and "Content-Encoding" not in missing.headers
    assert json.loads(missing.body)["error"]["code"] == 404
    unsatisfiable = await fetch(server, "/app.js", **{"Accept-Encoding": "gzip", "Range": "bytes=99999999-"})
    assert unsatisfiable.code == 416 and json.loads(unsatisfiable.body)["error"]["code"] == 416


async def test_api_answers_are_not_compressed_nor_cached(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    for _ in range(30):
        await alice.send("a message long enough that a list of them would compress well " * 3)
    gz = {"Accept-Encoding": "gzip", "Authorization": f"VK {alice.launch}"}
    for path in ("/v1/messages/get?chat=0", "/v1/messages/get", "/v1/nothing"):
        response = await fetch(server, path, **gz)
        assert response.headers["Cache-Control"] == "no-store", path
        assert "Content-Encoding" not in response.headers and "Etag" not in response.headers, path
        assert json.loads(response.body)["response"] is (response.code == 200), path


def test_a_file_changed_on_disk_is_a_new_version(tmp_path):
    """Compressed once per version: the same stat gives the same entry, a rewrite a new one."""
    versions = FileVersions()
    path = tmp_path / "app.js"
    path.write_text("const version = 1;\n" * 100)
    first = versions.of(str(path), os.stat(path), compress=True)
    assert versions.of(str(path), os.stat(path), compress=True) is first
    assert gzip.decompress(first.gzipped) == path.read_bytes()
    path.write_text("const version = 2;\n" * 100)
    os.utime(path, ns=(first.stamp[0] + 1_000_000_000, first.stamp[0] + 1_000_000_000))
    second = versions.of(str(path), os.stat(path), compress=True)
    assert second.etag != first.etag and second.content == path.read_bytes()
    assert versions.of(str(path), os.stat(path), compress=False) is second  # one entry per version, however asked
