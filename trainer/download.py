"""Fetch Mikolov's `simple-examples` archive, verify it, and extract the three PTB word-level files.

    python -m trainer download --out data/ptb

The archive's own checksum is not published by its author, so the three extracted files are pinned instead:
each must match the sha256 below (the files every PTB paper uses). A known archive checksum can be given with
--sha256 and is then checked too. A corrupt or truncated archive, or a file that does not match, is refused
and nothing is left in the output directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from trainer.errors import TrainerError

DEFAULT_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
MEMBER_DIR = "simple-examples/data"
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Download `url` into `dest`; returns the sha256 of what was received."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, dest.open("wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False, disable=None) as bar:
                while block := r.read(1 << 16):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
            if total is not None and f.tell() != total:
                raise TrainerError(f"{url}: received {f.tell():,} of {total:,} bytes (connection cut)")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise TrainerError(f"{url}: download failed ({e})") from None
    return h.hexdigest()


def download_ptb(
    out: str | Path,
    url: str = DEFAULT_URL,
    archive_sha256: str | None = None,
    expected: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> list[Path]:
    """Download, verify and extract; returns the paths of the three files in `out`."""
    out = Path(out)
    expected = PTB_SHA256 if expected is None else expected
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(out, url, archive_sha256, expected, timeout)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # leave no trace of a failed download
        raise


def _download_into(out: Path, url: str, archive_sha256: str | None, expected: dict[str, str], timeout: float):
    with tempfile.TemporaryDirectory(dir=out) as tmp_name:
        tmp = Path(tmp_name)
        archive = tmp / "simple-examples.tgz"
        digest = _fetch(url, archive, timeout)
        if archive_sha256 and digest != archive_sha256.lower():
            raise TrainerError(f"{url}: archive sha256 {digest} does not match the expected {archive_sha256}")
        extracted: list[Path] = []
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
                for name, sha in expected.items():
                    member = members.get(f"{MEMBER_DIR}/{name}")
                    if member is None or not member.isfile():
                        raise TrainerError(f"{url}: the archive has no {MEMBER_DIR}/{name}; is it simple-examples?")
                    src = tar.extractfile(member)
                    assert src is not None
                    target = tmp / name
                    with target.open("wb") as f:
                        shutil.copyfileobj(src, f)
                    got = hashlib.sha256(target.read_bytes()).hexdigest()
                    if got != sha:
                        raise TrainerError(f"{url}: {name} has sha256 {got}, expected {sha} (corrupt or altered)")
                    extracted.append(target)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise TrainerError(f"{url}: corrupt or truncated archive ({e})") from None
        final = []
        for path in extracted:
            os.replace(path, out / path.name)
            final.append(out / path.name)
    return final
