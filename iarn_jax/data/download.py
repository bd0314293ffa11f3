"""Download public datasets with checksum verification (standard library only).

``download(name_or_url, dest_dir)`` fetches a registered dataset (see
:data:`REGISTRY` and :func:`amazon_2018_entry`) or any URL:

1. the file is streamed to a temporary ``.part`` file in ``dest_dir`` while its
   sha256 is computed;
2. the digest is compared with ``sha256=`` (or the registry's). On a mismatch
   the partial file is removed, nothing is extracted and a
   :class:`DownloadError` is raised. When no digest is known, the computed one
   is printed so it can be passed as ``sha256=`` next time;
3. zip / tar archives and single ``.gz`` files are extracted (``extract=True``)
   into a temporary folder; extracted files with a known sha256 are checked,
   and only then moved into ``dest_dir``. Registered gzip files that the
   loaders read directly (Amazon) are kept compressed.

Archive digests of the GroupLens zips could not be established offline, so the
registry leaves their ``sha256`` unset and instead pins the sha256 of the
extracted files where the project's data README lists them.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from typing import Mapping, Optional

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
AMAZON_2018 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or did not match its expected checksum."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered dataset file.

    url: where to fetch it. sha256: digest of the downloaded file, or None when
    unknown. extract: whether to unpack it after download. files: sha256 of
    files expected after extraction (paths relative to dest_dir).
    """

    url: str
    sha256: Optional[str] = None
    extract: bool = True
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, Entry] = {
    "ml-100k": Entry(
        GROUPLENS + "ml-100k.zip",
        files={
            "ml-100k/u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "ml-100k/u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "ml-100k/u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
        },
    ),
    "ml-1m": Entry(GROUPLENS + "ml-1m.zip"),
    "ml-latest-small": Entry(
        GROUPLENS + "ml-latest-small.zip",
        files={
            "ml-latest-small/ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
            "ml-latest-small/movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        },
    ),
}

# Amazon 2018 files whose sha256 the project's data README lists (original bytes).
AMAZON_2018_SHA256 = {
    "Magazine_Subscriptions.csv": "6e1b48a78f7d4713a3f15abb028d5a1258e3c06d04b258b9d478f55d057a6696",
    "Magazine_Subscriptions_5.json.gz": "95c124603d62d6acdfd1bd62284934fb6c513db836ea64c2e8176c14256426f2",
    "meta_Magazine_Subscriptions.json.gz": "147cb78dac0f9ce04849b196e2e13cad6a504bff45d53500b7a1fe8121d91595",
    "Gift_Cards_5.json.gz": "41e1f0e50d3c1c9d7d949fb6315944c8bde51ea6b7429a29fdd0d02cbc07ef25",
    "meta_Gift_Cards.json.gz": "07fd154b7275ab9b1537e3802913508c7a5f84ed00f73201cd3fa18b2b51b342",
}
AMAZON_2018_KINDS = {
    "ratings": "categoryFilesSmall/{category}.csv",
    "5core": "categoryFilesSmall/{category}_5.json.gz",
    "reviews": "categoryFiles/{category}.json.gz",
    "meta": "metaFiles2/meta_{category}.json.gz",
}


def amazon_2018_entry(category: str, kind: str) -> Entry:
    """Entry of one Amazon 2018 per-category file; kind in ratings, 5core, reviews, meta."""
    if kind not in AMAZON_2018_KINDS:
        raise ValueError(f"unknown Amazon 2018 file kind {kind!r}; use one of {', '.join(AMAZON_2018_KINDS)}")
    relative = AMAZON_2018_KINDS[kind].format(category=category)
    filename = relative.rsplit("/", 1)[-1]
    return Entry(AMAZON_2018 + relative, sha256=AMAZON_2018_SHA256.get(filename), extract=False)


def resolve(name_or_url: str, url: Optional[str] = None) -> Entry:
    """The Entry for a registry name, ``amazon2018:<Category>:<kind>``, or a URL.

    ``url`` replaces the entry's URL (a mirror) but keeps its checksums.
    """
    if name_or_url in REGISTRY:
        entry = REGISTRY[name_or_url]
    elif name_or_url.startswith("amazon2018:"):
        parts = name_or_url.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name_or_url!r}: use amazon2018:<Category>:<kind>, e.g. amazon2018:Gift_Cards:5core")
        entry = amazon_2018_entry(parts[1], parts[2])
    elif urllib.parse.urlparse(name_or_url).scheme in ("http", "https", "file"):
        entry = Entry(name_or_url)
    else:
        raise ValueError(
            f"unknown dataset {name_or_url!r}; use a URL, amazon2018:<Category>:<kind>, "
            f"or one of: {', '.join(REGISTRY)}"
        )
    return dataclasses.replace(entry, url=url) if url else entry


def sha256_of(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _say(message: str) -> None:
    print(f"[iarn_jax.download] {message}", file=sys.stderr, flush=True)


def _fetch(url: str, target: pathlib.Path, progress: bool) -> str:
    """Stream ``url`` into ``target``; return the sha256 of what was written."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "iarn_jax-download"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress and total and done / total >= next_report:
                    _say(f"{target.name.removesuffix('.part')}: {done / total:.0%} of {total / 1e6:.1f} MB")
                    next_report += 0.1
    except OSError as error:  # URLError, HTTPError and socket errors are all OSErrors
        raise DownloadError(f"cannot download {url}: {error}") from None
    return digest.hexdigest()


def _check_digest(actual: str, expected: Optional[str], what: str) -> None:
    if expected is not None and actual.lower() != expected.lower():
        raise DownloadError(f"{what}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def _safe_members(names, root: pathlib.Path) -> None:
    """Refuse archive members that would land outside ``root`` (path traversal)."""
    root = root.resolve()
    for name in names:
        if not (root / name).resolve().is_relative_to(root):
            raise DownloadError(f"archive member {name!r} would be written outside {root}")


def _unpack(archive: pathlib.Path, into: pathlib.Path) -> None:
    """Extract a zip / tar archive or decompress a single .gz file into ``into``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            _safe_members(handle.namelist(), into)
            handle.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            _safe_members(handle.getnames(), into)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
                handle.extractall(into, filter="data")
            else:  # pragma: no cover - older Pythons; members were checked above
                handle.extractall(into)
    elif archive.name.endswith(".gz"):
        with gzip.open(archive, "rb") as source, open(into / archive.name[: -len(".gz")], "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
    else:
        raise DownloadError(f"{archive}: not a zip, tar or gzip file; pass extract=False to keep it as is")


def _extract(archive: pathlib.Path, dest_dir: pathlib.Path, files: Mapping[str, str]) -> pathlib.Path:
    """Extract into a staging folder, verify known files, then move into dest_dir.

    Returns the single top-level folder (or file) extracted, else dest_dir.
    """
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
    try:
        _unpack(archive, staging)
        for relative, expected in files.items():
            path = staging / relative
            if not path.exists():
                raise DownloadError(f"{archive.name}: expected file {relative} is missing from the archive")
            _check_digest(sha256_of(path), expected, f"{archive.name}: {relative}")
        top = sorted(staging.iterdir())
        for item in top:
            final = dest_dir / item.name
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(item, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest_dir / top[0].name if len(top) == 1 else dest_dir


def download(
    name_or_url: str,
    dest_dir: pathlib.Path | str,
    *,
    sha256: Optional[str] = None,
    url: Optional[str] = None,
    extract: bool = True,
    progress: bool = True,
) -> pathlib.Path:
    """Download (and verify, and extract) a dataset; return the data path.

    name_or_url: a REGISTRY name (``ml-100k``, ``ml-1m``, ``ml-latest-small``),
      ``amazon2018:<Category>:<ratings|5core|reviews|meta>`` or a URL.
    sha256: expected digest of the downloaded file (overrides the registry's).
    url: a mirror URL for a registered name (its checksums still apply).
    extract: unpack archives (registered Amazon gzip files always stay packed).
    Returns the extracted folder (or file), or the downloaded file.
    """
    entry = resolve(name_or_url, url)
    expected = sha256 or entry.sha256
    dest_dir = pathlib.Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    filename = pathlib.PurePosixPath(urllib.parse.urlparse(entry.url).path).name or "download"
    target = dest_dir / filename
    handle, part_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    os.close(handle)
    part = pathlib.Path(part_name)
    try:
        if progress:
            _say(f"downloading {entry.url}")
        actual = _fetch(entry.url, part, progress)
        _check_digest(actual, expected, entry.url)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    if expected is None:
        _say(f"{filename}: sha256 {actual} (not verified: pass sha256='{actual}' to pin it)")
    elif progress:
        _say(f"{filename}: sha256 verified")
    if not (extract and entry.extract):
        return target
    try:
        return _extract(target, dest_dir, entry.files)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
