"""Tests for iarn_jax.data.download against a local HTTP server (no outside network)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
import zipfile

import pytest
from conftest import require_data

from iarn_jax.data import download as dl
from iarn_jax.data.loaders import load_movielens_100k

U_DATA_SHA256 = dl.REGISTRY["ml-100k"].files["ml-100k/u.data"]


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (random free port); yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ml100k_zip(served):
    folder, base = served
    members = {f"ml-100k/{name}": require_data(f"movielens/ml-100k/{name}").read_bytes()
               for name in ("u.data", "u.item", "u.genre")}
    digest = make_zip(folder / "ml-100k.zip", members)
    return base + "ml-100k.zip", digest


def test_download_verifies_and_extracts_a_loadable_folder(tmp_path, ml100k_zip, capsys):
    url, digest = ml100k_zip
    dest = tmp_path / "dest"
    path = dl.download(url, dest, sha256=digest)
    assert path == dest / "ml-100k" and (path / "u.data").exists()
    assert hashlib.sha256((path / "u.data").read_bytes()).hexdigest() == U_DATA_SHA256
    dataset = load_movielens_100k(path)
    assert (len(dataset.ratings), dataset.n_users, dataset.n_items) == (100_000, 943, 1_682)
    assert dataset.item_titles[0] == "Toy Story (1995)"
    assert "sha256 verified" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == ["ml-100k", "ml-100k.zip"]  # no .part / staging left


def test_wrong_sha256_leaves_nothing_behind(tmp_path, ml100k_zip):
    url, _ = ml100k_zip
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match="sha256 mismatch: expected 0{64}"):
        dl.download(url, dest, sha256="0" * 64, progress=False)
    assert list(dest.iterdir()) == []


def test_unknown_digest_is_printed(tmp_path, ml100k_zip, capsys):
    url, digest = ml100k_zip
    path = dl.download(url, tmp_path / "dest", extract=False, progress=False)
    assert path.name == "ml-100k.zip"
    assert f"sha256 {digest} (not verified" in capsys.readouterr().err


def test_registry_name_with_mirror_checks_extracted_files(tmp_path, served, ml100k_zip):
    folder, base = served
    url, _ = ml100k_zip
    path = dl.download("ml-100k", tmp_path / "ok", url=url, progress=False)
    assert (path / "u.data").exists()
    make_zip(folder / "tampered.zip", {"ml-100k/u.data": b"1\t1\t5\t0\n"})
    dest = tmp_path / "bad"
    with pytest.raises(dl.DownloadError, match="ml-100k/u.data: sha256 mismatch"):
        dl.download("ml-100k", dest, url=base + "tampered.zip", progress=False)
    assert list(dest.iterdir()) == []  # archive and staging folder removed, nothing extracted


def test_gzip_file_is_decompressed(tmp_path, served):
    folder, base = served
    (folder / "ratings.csv.gz").write_bytes(gzip.compress(b"user,item,rating,time\n1,2,3,4\n"))
    path = dl.download(base + "ratings.csv.gz", tmp_path / "dest", progress=False)
    assert path == tmp_path / "dest" / "ratings.csv"
    assert path.read_bytes() == b"user,item,rating,time\n1,2,3,4\n"


def test_archive_path_traversal_is_refused(tmp_path, served):
    folder, base = served
    make_zip(folder / "evil.zip", {"../evil.txt": b"x"})
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.download(base + "evil.zip", dest, progress=False)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []


def test_http_error_is_a_download_error(tmp_path, served):
    _, base = served
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match="cannot download"):
        dl.download(base + "missing.zip", dest, progress=False)
    assert list(dest.iterdir()) == []


def test_registry_resolution():
    entry = dl.resolve("amazon2018:Magazine_Subscriptions:5core")
    assert entry.url.endswith("categoryFilesSmall/Magazine_Subscriptions_5.json.gz")
    assert entry.sha256 == "95c124603d62d6acdfd1bd62284934fb6c513db836ea64c2e8176c14256426f2"
    assert not entry.extract
    assert dl.resolve("amazon2018:Books:meta").url.endswith("metaFiles2/meta_Books.json.gz")
    assert dl.resolve("amazon2018:Books:meta").sha256 is None
    assert dl.resolve("ml-1m").url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    mirrored = dl.resolve("ml-latest-small", url="http://mirror/x.zip")
    assert mirrored.url == "http://mirror/x.zip" and mirrored.files == dl.REGISTRY["ml-latest-small"].files
    for bad in ("ml-2k", "amazon2018:Books", "amazon2018:Books:pdf"):
        with pytest.raises(ValueError):
            dl.resolve(bad)
