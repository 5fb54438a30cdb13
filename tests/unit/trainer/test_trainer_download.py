"""download_ptb against a local HTTP server (no network): success, and every refusal leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from trainer.download import MEMBER_DIR, download_ptb
from trainer.errors import TrainerError

NAMES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")


def fake_files() -> dict[str, bytes]:
    """Small PTB-looking files; long enough (and varied enough) that truncation lands inside the data."""
    words = [f"w{i}" for i in range(300)]
    files = {}
    for k, name in enumerate(NAMES):
        lines = [" ".join(words[(i * 7 + j * 13 + k) % 300] for j in range(12)) for i in range(150)]
        files[name] = ("\n".join(lines) + "\n").encode()
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_archive(files: dict[str, bytes], prefix: str = MEMBER_DIR) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        readme = b"not part of PTB\n"
        info = tarfile.TarInfo("simple-examples/README")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return buf.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class CutHandler(QuietHandler):
    """Announces more bytes than it sends, then closes: a connection cut mid-download."""

    def do_GET(self) -> None:
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + 1000))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def serve(directory: Path, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def www(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    return d


@pytest.fixture
def server(www: Path) -> Iterator[str]:
    yield from serve(www, QuietHandler)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output directory that already holds a file of its own: it must survive any failure untouched."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "keep.txt").write_text("already here\n", encoding="utf-8")
    return d


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>" for p in directory.rglob("*")}


FILES = fake_files()
EXPECTED = {name: sha256(data) for name, data in FILES.items()}


def test_download_verifies_and_extracts(www: Path, server: str, out: Path) -> None:
    archive = make_archive(FILES)
    (www / "simple-examples.tgz").write_bytes(archive)
    paths = download_ptb(out, url=f"{server}/simple-examples.tgz", archive_sha256=sha256(archive), expected=EXPECTED)
    assert sorted(paths) == sorted(out / name for name in NAMES)
    for name in NAMES:
        assert (out / name).read_bytes() == FILES[name]
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, "keep.txt"])  # no temp dir, no archive


def test_download_accepts_an_upper_case_archive_sha(www: Path, server: str, out: Path) -> None:
    archive = make_archive(FILES)
    (www / "a.tgz").write_bytes(archive)
    download_ptb(out, url=f"{server}/a.tgz", archive_sha256=sha256(archive).upper(), expected=EXPECTED)
    assert (out / "ptb.test.txt").read_bytes() == FILES["ptb.test.txt"]


def test_download_creates_the_output_directory(www: Path, server: str, tmp_path: Path) -> None:
    (www / "a.tgz").write_bytes(make_archive(FILES))
    target = tmp_path / "new" / "ptb"
    download_ptb(target, url=f"{server}/a.tgz", expected=EXPECTED)
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)


def refused(out: Path, match: str, **kwargs) -> TrainerError:
    before = snapshot(out)
    with pytest.raises(TrainerError, match=match) as e:
        download_ptb(out, **kwargs)
    assert snapshot(out) == before, "a failed download must leave the output directory as it was"
    return e.value


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_archive_is_refused(www: Path, server: str, out: Path, fraction: float) -> None:
    archive = make_archive(FILES)
    (www / "a.tgz").write_bytes(archive[: int(len(archive) * fraction)])
    refused(out, "corrupt or truncated", url=f"{server}/a.tgz", expected=EXPECTED)


def test_garbage_is_refused(www: Path, server: str, out: Path) -> None:
    (www / "a.tgz").write_bytes(b"<html>not found</html>\n" * 50)
    refused(out, "corrupt or truncated", url=f"{server}/a.tgz", expected=EXPECTED)


def test_altered_file_is_refused_by_its_sha256(www: Path, server: str, out: Path) -> None:
    altered = {**FILES, "ptb.valid.txt": FILES["ptb.valid.txt"].replace(b"w1 ", b"w2 ", 1)}
    (www / "a.tgz").write_bytes(make_archive(altered))
    error = refused(out, r"ptb\.valid\.txt has sha256", url=f"{server}/a.tgz", expected=EXPECTED)
    assert EXPECTED["ptb.valid.txt"] in str(error)


def test_previous_files_survive_a_failed_download(www: Path, server: str, out: Path) -> None:
    # A good ptb.train.txt already in place, then an archive whose test file is wrong: nothing is replaced.
    (out / "ptb.train.txt").write_bytes(b"the old train file\n")
    altered = {**FILES, "ptb.test.txt": b"something else\n"}
    (www / "a.tgz").write_bytes(make_archive(altered))
    refused(out, "sha256", url=f"{server}/a.tgz", expected=EXPECTED)
    assert (out / "ptb.train.txt").read_bytes() == b"the old train file\n"


def test_wrong_archive_sha256_is_refused(www: Path, server: str, out: Path) -> None:
    archive = make_archive(FILES)
    (www / "a.tgz").write_bytes(archive)
    refused(out, "archive sha256", url=f"{server}/a.tgz", archive_sha256="0" * 64, expected=EXPECTED)


def test_archive_without_the_ptb_files_is_refused(www: Path, server: str, out: Path) -> None:
    (www / "a.tgz").write_bytes(make_archive(FILES, prefix="other/data"))
    refused(out, "has no simple-examples/data/ptb.train.txt", url=f"{server}/a.tgz", expected=EXPECTED)


def test_missing_url_is_refused(server: str, out: Path) -> None:
    refused(out, "download failed", url=f"{server}/nothing-here.tgz", expected=EXPECTED)


def test_unreachable_server_is_refused(out: Path) -> None:
    # Port 9 on 127.0.0.1 (discard): nothing listens there; the connection is refused at once.
    refused(out, "download failed", url="http://127.0.0.1:9/a.tgz", expected=EXPECTED, timeout=5)


def test_connection_cut_is_refused(www: Path, out: Path) -> None:
    (www / "a.tgz").write_bytes(make_archive(FILES))
    for url in serve(www, CutHandler):
        refused(out, "connection cut", url=f"{url}/a.tgz", expected=EXPECTED)


def test_default_pins_accept_the_real_ptb_files(ptb_dir: Path, www: Path, server: str, out: Path) -> None:
    """With the default pins (no `expected=`), an archive of the real PTB files is accepted."""
    real = {name: (ptb_dir / name).read_bytes() for name in NAMES}
    (www / "simple-examples.tgz").write_bytes(make_archive(real))
    download_ptb(out, url=f"{server}/simple-examples.tgz")
    for name in NAMES:
        assert (out / name).read_bytes() == real[name]
    # ...and the fake files are refused by the same default pins.
    (www / "fake.tgz").write_bytes(make_archive(FILES))
    fresh = out.parent / "fresh"
    fresh.mkdir()
    refused(fresh, "sha256", url=f"{server}/fake.tgz")
