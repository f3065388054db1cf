"""Bundle downloads: a real https server on loopback with a plant CA (certificate checked
against rollout.tls_ca_file, refused against the system CAs), file:// URLs, the size cap,
an archive longer than announced and a wrong checksum; nothing is left behind on failure."""

from __future__ import annotations

import hashlib
import http.server
import itertools
import ssl
import threading

import pytest
from test_mqtt_auth import make_ca, make_signed

from edge_monitor.core.errors import BadInputError
from edge_monitor.fleet.download import DownloadError, download

SIZE = 3_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An https server for 127.0.0.1 with a certificate of a throw-away CA."""
    root = tmp_path_factory.mktemp("https")
    ca = make_ca(root, "plant-ca")
    key, cert = make_signed(root, "files", ca, "IP:127.0.0.1")
    files = root / "files"
    files.mkdir()
    payload = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
    (files / "bundle.tar").write_bytes(payload)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(files), **kwargs)

        def log_message(self, *args):
            """Keep access logs out of the test output."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/bundle.tar"
    yield {"url": url, "ca": ca[1], "payload": payload, "file": files / "bundle.tar"}
    server.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_https_download_checks_the_certificate_against_the_plant_ca(served, tmp_path):
    seen: list[float] = []
    dest = download(served["url"], tmp_path / "b.tar", sha(served["payload"]), SIZE, SIZE,
                    10.0, seen.append, ca_file=served["ca"])
    assert dest.read_bytes() == served["payload"]
    assert seen == sorted(seen) and len(seen) >= 5 and seen[-1] == 1.0
    assert min(b - a for a, b in itertools.pairwise(seen)) >= 0.1  # not every chunk
    with pytest.raises(DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
        download(served["url"], tmp_path / "c.tar", sha(served["payload"]), SIZE, SIZE, 10.0)
    assert not (tmp_path / "c.tar").exists()


def test_size_and_checksum_are_enforced(served, tmp_path):
    url, payload = served["file"].as_uri(), served["payload"]
    with pytest.raises(BadInputError, match="over this box's cap of 1000 bytes"):
        download(url, tmp_path / "a.tar", sha(payload), SIZE, 1000, 10.0)
    with pytest.raises(DownloadError, match="more than the announced size_bytes 1000"):
        download(url, tmp_path / "a.tar", sha(payload), 1000, SIZE, 10.0)
    with pytest.raises(DownloadError, match="got 3000000 bytes, the command announced 3000001"):
        download(url, tmp_path / "a.tar", sha(payload), SIZE + 1, SIZE + 1, 10.0)
    with pytest.raises(DownloadError, match="does not match the command's"):
        download(url, tmp_path / "a.tar", "0" * 64, SIZE, SIZE, 10.0)
    with pytest.raises(DownloadError, match="cannot read"):
        download(url + ".missing", tmp_path / "a.tar", "0" * 64, SIZE, SIZE, 10.0)
    assert list(tmp_path.iterdir()) == []
