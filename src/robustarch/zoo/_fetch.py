"""Moving bytes: resumable HTTP downloads, Google Drive files and folders, safe archive extraction.

Everything here writes to a ``.part`` file the caller names; the caller checks the content and the hash
and only then renames it into the cache, so an interrupted, wrong or HTML download never looks cached.

* HTTP(S) through ``urllib`` (redirects followed): streamed in 1 MiB blocks with a tqdm bar on stderr, and
  resumed with an HTTP ``Range`` request when the connection drops mid-file (up to ``ATTEMPTS`` tries) or when
  a previous run left a ``.part`` file.
* Google Drive: through ``gdown`` when it is installed (``pip install 'robustarch[drive]'``), which follows
  Drive's confirmation pages and lists folders; otherwise the direct download address with its
  virus-scan confirmation form handled here. A Drive page that is still HTML (quota exceeded, not shared)
  is caught by the caller's content check with an explanation.
* Archives (zip, tar): a member is extracted only after every member path is checked to stay inside the
  target folder, and links are refused.
"""

from __future__ import annotations

import fnmatch
import html.parser
import http.client
import logging
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from robustarch import __version__
from robustarch.errors import RobustarchError

log = logging.getLogger(__name__)

ATTEMPTS = 5
TIMEOUT_S = 60.0
BLOCK = 1 << 20
# where a Drive file id is downloaded without gdown; "confirm=t" skips the virus-scan page for public files
DRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
DRIVE_FILE_PAGE = "https://drive.google.com/file/d/{id}/view"
DRIVE_FOLDER_PAGE = "https://drive.google.com/drive/folders/{id}"
# seconds to wait before retry n (1, 2, ...): short, since most failures are a dropped connection
retry_delay: Callable[[int], float] = lambda n: min(0.5 * 2 ** (n - 1), 8.0)  # noqa: E731


class FetchError(RobustarchError):
    """A download failed (HTTP error, network gone, too many retries)."""


class NotFoundError(FetchError):
    """The server answered 404/410: the file is not there (a mirror may simply lack it)."""


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": f"robustarch/{__version__} (+weights registry)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def _progress(desc: str, total: int | None, initial: int) -> Any:
    from tqdm import tqdm

    # disable=None: a bar only on a terminal, so logs and CI output stay clean
    units = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=None, leave=False, **units)


def _content_range_total(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _stream(response: Any, part: Path, offset: int, total: int | None, desc: str) -> None:
    with open(part, "ab" if offset else "wb") as out, _progress(desc, total, offset) as bar:
        while True:
            block = response.read(BLOCK)
            if not block:
                break
            out.write(block)
            bar.update(len(block))


def _one_attempt(url: str, part: Path, desc: str) -> bool:
    """Fetch what is missing of ``part``; True when it is complete (as far as the server says)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        with urllib.request.urlopen(_request(url, offset), timeout=TIMEOUT_S) as response:
            if offset and response.status != 206:  # the server ignored the Range header: start over
                log.info("%s: the server does not resume downloads, starting again", desc)
                offset = 0
            length = response.headers.get("Content-Length")
            total = _content_range_total(response.headers.get("Content-Range")) if offset else None
            if total is None and length is not None and length.isdigit():
                total = offset + int(length)
            _stream(response, part, offset, total, desc)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: complete if the sizes agree
            total = _content_range_total(err.headers.get("Content-Range"))
            if total == offset:
                return True
            part.unlink()
            return False
        if err.code in (404, 410):
            raise NotFoundError(f"{url}: HTTP {err.code} {err.reason}") from err
        if err.code in (401, 403):
            raise FetchError(f"{url}: HTTP {err.code} {err.reason} (not public, or needs a sign-in)") from err
        raise
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)
    return True


def http_download(url: str, part: Path, *, desc: str | None = None) -> Path:
    """Download ``url`` into ``part``, resuming what a previous attempt left there; retries dropped
    connections and server errors ``ATTEMPTS`` times with an HTTP Range request. Returns ``part``."""
    desc = desc or PurePosixPath(urllib.parse.urlparse(url).path).name or url
    part.parent.mkdir(parents=True, exist_ok=True)
    last: BaseException | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if _one_attempt(url, part, desc):
                return part
            continue
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
            last = err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            if isinstance(err, urllib.error.URLError) and isinstance(err.reason, FileNotFoundError):
                raise NotFoundError(f"{url}: no such file") from err
            last = err
        have = part.stat().st_size if part.exists() else 0
        log.warning(
            "%s: attempt %d of %d failed after %d bytes (%s); resuming", desc, attempt, ATTEMPTS, have, last
        )
        if attempt < ATTEMPTS:
            time.sleep(retry_delay(attempt))
    raise FetchError(f"{url}: gave up after {ATTEMPTS} attempts (last error: {last}); run again to resume")


# --------------------------------------------------------------------------------------------------
# Google Drive


def gdown_module() -> Any | None:
    """gdown when installed (the optional ``drive`` extra), else None."""
    try:
        import gdown
    except ImportError:
        return None
    return gdown


class _FormParser(html.parser.HTMLParser):
    """Drive's "can't scan this file for viruses" page: a form whose hidden inputs make the download URL."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None and a.get("id") == "download-form":
            self.action, self._in_form = a.get("action"), True
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _confirm_url(page: Path) -> str | None:
    if page.stat().st_size > 1 << 20:  # a real file, not a page
        return None
    parser = _FormParser()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    if not parser.action:
        return None
    return parser.action + "?" + urllib.parse.urlencode(parser.fields)


def _starts_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def drive_download(file_id: str, part: Path, *, desc: str) -> Path:
    """Download Drive file ``file_id`` into ``part`` (gdown if installed, else the direct address with its
    confirmation form followed once). Whatever Drive sent is in ``part``: the caller checks it."""
    gdown = gdown_module()
    part.parent.mkdir(parents=True, exist_ok=True)
    if gdown is not None:
        log.info("%s: Google Drive file %s via gdown", desc, file_id)
        try:
            # resume=True: gdown keeps its own partial file beside `part` and renames it when complete, so an
            # interrupted Drive download continues on the next run
            gdown.download(id=file_id, output=str(part), quiet=not sys.stderr.isatty(), resume=True)
        except Exception as err:  # gdown raises its own FileURLRetrievalError and requests' errors
            raise FetchError(f"Google Drive file {file_id}: gdown failed: {err}") from err
        return part
    http_download(DRIVE_DOWNLOAD_URL.format(id=file_id), part, desc=desc)
    if _starts_like_html(part):
        confirm = _confirm_url(part)
        if confirm:
            log.info("%s: following Google Drive's download confirmation", desc)
            part.unlink()
            http_download(confirm, part, desc=desc)
    return part


@dataclass(frozen=True)
class DriveListing:
    """One file of a Drive folder: its path inside the folder and its file id."""

    path: str
    id: str


def drive_folder_files(folder_id: str) -> list[DriveListing]:
    """The files of a public Drive folder (recursively), listed by gdown without downloading them."""
    gdown = _require_gdown(f"listing Google Drive folder {folder_id}")
    try:
        found = gdown.download_folder(id=folder_id, skip_download=True, quiet=True, output="listing")
    except Exception as err:
        raise FetchError(f"Google Drive folder {folder_id}: gdown could not list it: {err}") from err
    # gdown's paths are relative to the listed folder
    return [DriveListing(str(item.path).replace("\\", "/"), item.id) for item in found or []]


def drive_folder_download(folder_id: str, out_dir: Path) -> Path:
    """Download a whole (small) Drive folder into ``out_dir``: the authors' DenseNAS model folders."""
    gdown = _require_gdown(f"downloading Google Drive folder {folder_id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        files = gdown.download_folder(
            id=folder_id, output=str(out_dir), quiet=not sys.stderr.isatty(), resume=True
        )
    except Exception as err:
        raise FetchError(f"Google Drive folder {folder_id}: gdown failed: {err}") from err
    if not files:
        raise FetchError(f"Google Drive folder {folder_id}: gdown downloaded nothing")
    return out_dir


def _require_gdown(what: str) -> Any:
    gdown = gdown_module()
    if gdown is None:
        raise FetchError(
            f"{what} needs gdown, which is not installed: pip install 'robustarch[drive]' (or pip install "
            "gdown). Without it, download the file in a browser and import it with `robustarch weights fetch "
            "... --file PATH`."
        )
    return gdown


def match_member(listing: list[DriveListing], pattern: str) -> DriveListing:
    """The one listed file whose path matches ``pattern`` (fnmatch; ``*`` spans folders; the pattern may
    match the whole path or its end after a ``/``)."""
    hits = [
        f
        for f in listing
        if fnmatch.fnmatchcase(f.path, pattern) or fnmatch.fnmatchcase(f.path, "*/" + pattern)
    ]
    if len(hits) == 1:
        return hits[0]
    base = PurePosixPath(pattern).name.replace("*", "")
    near = [f.path for f in listing if f.path.endswith(base)] or [f.path for f in listing]
    why = "several files match" if hits else "no file matches"
    shown = ", ".join(([f.path for f in hits] if hits else near)[:10]) or "none"
    raise FetchError(
        f"{why} {pattern!r} in the Drive folder ({len(listing)} files; e.g. {shown}); "
        "download the file by hand and import it with `robustarch weights fetch ... --file PATH`"
    )


# --------------------------------------------------------------------------------------------------
# archives


def _safe_member_path(name: str, where: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise FetchError(f"{where}: refusing archive member {name!r}, which points outside the target folder")
    return path


def check_archive(archive: Path) -> list[str]:
    """Every member name of a zip or tar archive, after checking that none escapes the target folder (absolute
    paths, ``..``) and that the tar holds no links or devices."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()):
                raise FetchError(f"{archive}: refusing archive member {m.name!r} (a link or device)")
        names = [m.name for m in members]
    else:
        raise FetchError(f"{archive} is neither a zip nor a tar archive")
    for name in names:
        _safe_member_path(name, str(archive))
    return names


def extract_member(archive: Path, member: str, part: Path) -> Path:
    """Copy ``member`` of ``archive`` to ``part`` (the archive is checked whole first)."""
    names = check_archive(archive)
    wanted = _safe_member_path(member, str(archive)).as_posix()
    matches = [n for n in names if PurePosixPath(n).as_posix() == wanted]
    if not matches:
        near = [n for n in names if PurePosixPath(n).name == PurePosixPath(member).name]
        raise FetchError(
            f"{archive} has no member {member!r}" + (f" (same name: {', '.join(near[:5])})" if near else "")
        )
    part.parent.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z, z.open(matches[0]) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, BLOCK)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(matches[0])
            if src is None:
                raise FetchError(f"{archive}: member {member!r} is not a file")
            with src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, BLOCK)
    return part
