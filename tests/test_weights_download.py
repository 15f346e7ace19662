"""Downloads of published weights, end to end against a loopback HTTP server (127.0.0.1, a thread in the
test) serving generated checkpoints: verify, cache hit without a second request, resume after the
connection is cut mid-file, redirects, wrong hashes, HTML pages, Google Drive's confirmation page, offline
mode, mirror folders and URLs, trust on first use, archives. Nothing here leaves this machine."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import threading
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.zoo import _cache, _fetch, weights

DRIVE_HTML = (
    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
    "<p>Google Drive can't scan this file for viruses.</p>"
    '<form id="download-form" action="{action}" method="get">'
    '<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">'
    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="abc-123">'
    "</form></body></html>"
)
QUOTA_HTML = (
    "<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users have viewed or "
    "downloaded this file recently. <a href='https://accounts.google.com/'>Sign in</a></body></html>"
)


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with HTTP Range support; ``cut`` paths send half their bytes once and
    drop the connection; ``redirects`` answer 302; every request is counted."""

    daemon_threads = True

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.ignore_range: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.ranges: list[str | None] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        parsed = urllib.parse.urlparse(self.path)
        path = parsed.path
        self.server.requests[path] += 1
        self.server.ranges.append(self.headers.get("Range"))
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/drive":  # Drive's direct address: a confirmation page first
            file_id = urllib.parse.parse_qs(parsed.query)["id"][0]
            self._send(
                DRIVE_HTML.format(action=self.server.url("/drive-confirm"), id=file_id).encode(), "text/html"
            )
            return
        if path == "/drive-confirm":
            query = urllib.parse.parse_qs(parsed.query)
            assert query["uuid"] == ["abc-123"] and query["confirm"] == ["t"]
            path = "/drive-files/" + query["id"][0]
        data = self.server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        self._send(data, "application/octet-stream", path)

    def _send(self, data: bytes, ctype: str, path: str = "") -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and path not in self.server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in self.server.cut:  # the connection drops half way, once
            self.server.cut.discard(path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache per test, no mirror, online, no proxy for loopback, no waiting between retries, and no
    gdown (the built-in Drive path is the one under test; gdown's own is tested with a stand-in)."""
    home = tmp_path / "home"
    monkeypatch.setenv("ROBUSTARCH_HOME", str(home))
    for var in ("ROBUSTARCH_OFFLINE", "ROBUSTARCH_WEIGHTS_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(_fetch, "retry_delay", lambda n: 0.0)
    monkeypatch.setattr(_fetch, "gdown_module", lambda: None)
    return home


def _checkpoint(seed: int = 0, **save_kw: object) -> tuple[bytes, torch.Tensor]:
    """A real small zoo checkpoint (CIFAR ResNet-18, width 8) and the logits it gives on a fixed batch."""
    torch.manual_seed(seed)
    model = zoo.load("resnet18", "cifar10", width=8)
    buf = io.BytesIO()
    torch.save(zoo.unwrap(model).state_dict(), buf, **save_kw)  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(_images())
    return buf.getvalue(), logits


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(url: str, **kw: object) -> weights.WeightEntry:
    base = {
        "model": "resnet18",
        "dataset": "cifar10",
        "source": "loopback",
        "kind": "url",
        "url": url,
        "file": "resnet18-test.pt",
        "default": True,
        "overrides": {"width": 8},
    }
    return weights._entry({**base, **kw})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Replace the registry's entries (the real sources and archives stay) for zoo.load / resolve tests."""

    real = weights._registry()

    def install(*entries: weights.WeightEntry, archives: dict | None = None) -> None:
        data = dict(real)
        data["entries"] = tuple(entries)
        if archives is not None:
            data["archives"] = archives
        monkeypatch.setattr(weights, "_registry", lambda: data)

    return install


def test_download_verify_and_cache_hit_without_a_second_request(server: Server, registry) -> None:
    data, logits = _checkpoint()
    entry = _entry(server.add("/w/resnet18.pt", data), sha256=_sha(data))
    registry(entry)
    first = weights.fetch(entry)
    assert first.how == "downloaded" and first.trust == "pinned"
    assert first.path.read_bytes() == data and first.path == weights.cached_path(entry)
    assert not list(first.path.parent.glob("*.part"))  # renamed into place, nothing left over
    # zoo.load by source name: the same file, from the cache, no new request
    model = zoo.load("resnet18", "cifar10", weights="loopback")
    with torch.no_grad():
        assert torch.equal(model(_images()), logits)
    assert model.weights_entry == entry
    assert weights.resolve("resnet18", "cifar10", True) == first.path
    assert server.requests["/w/resnet18.pt"] == 1


def test_resume_after_the_connection_is_cut_mid_file(server: Server) -> None:
    data, _ = _checkpoint()
    url = server.add("/w/big.pt", data)
    server.cut.add("/w/big.pt")
    result = weights.fetch(_entry(url, sha256=_sha(data)))
    assert result.path.read_bytes() == data
    assert server.requests["/w/big.pt"] == 2
    # the second request asked only for what was missing
    assert server.ranges[-1] == f"bytes={len(data) // 2}-"


def test_resume_a_part_file_left_by_a_killed_process_and_restart_when_range_is_ignored(
    server: Server,
) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/w/r.pt", data), sha256=_sha(data))
    part = weights.cached_path(entry).with_name(entry.file + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    assert weights.fetch(entry).path.read_bytes() == data
    assert server.ranges == ["bytes=1000-"]
    # a server that answers 200 to a Range request: start over instead of appending
    other = _entry(server.add("/w/s.pt", data), file="s.pt", sha256=_sha(data))
    server.ignore_range.add("/w/s.pt")
    part = weights.cached_path(other).with_name("s.pt.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"x" * 500)
    assert weights.fetch(other).path.read_bytes() == data


def test_redirect_is_followed(server: Server) -> None:
    data, _ = _checkpoint()
    server.add("/real/resnet18.pt", data)
    server.redirects["/moved/resnet18.pt"] = server.url("/real/resnet18.pt")
    result = weights.fetch(_entry(server.url("/moved/resnet18.pt"), sha256=_sha(data)))
    assert result.path.read_bytes() == data
    assert server.requests["/moved/resnet18.pt"] == 1 and server.requests["/real/resnet18.pt"] == 1


def test_wrong_hash_is_refused_with_expected_and_actual(server: Server) -> None:
    data, _ = _checkpoint()
    wrong = "0" * 64
    entry = _entry(server.add("/w/x.pt", data), sha256=wrong)
    with pytest.raises(weights.HashMismatchError) as err:
        weights.fetch(entry)
    assert wrong in str(err.value) and _sha(data) in str(err.value)
    target = weights.cached_path(entry)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    # a torchvision-style name prefix is checked too
    prefixed = _entry(server.url("/w/x.pt"), file="x-deadbeef.pt", sha256_prefix="deadbeef")
    with pytest.raises(weights.HashMismatchError, match="prefix its published name carries"):
        weights.fetch(prefixed)


def test_a_cached_file_whose_hash_changed_is_refused(server: Server, registry) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/w/f.pt", data), sha256=_sha(data))
    registry(entry)
    path = weights.fetch(entry).path
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10  # one bit of one weight: torch.load would accept it
    path.write_bytes(bytes(flipped))
    with pytest.raises(weights.HashMismatchError, match="not the published one"):
        zoo.load("resnet18", "cifar10", weights=True)
    assert server.requests["/w/f.pt"] == 1


def test_a_size_mismatch_is_refused_before_hashing(server: Server) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/w/sized.pt", data), size=len(data) + 1)
    with pytest.raises(
        weights.WeightsError, match=f"has {len(data)} bytes, but resnet18-test.pt has {len(data) + 1}"
    ):
        weights.fetch(entry)
    assert not _cache.lock_path().exists()
    assert weights.fetch(replace(entry, size=len(data))).trust == "first-use"


def test_trust_on_first_use_records_then_refuses_a_changed_file(server: Server, caplog) -> None:
    data, _ = _checkpoint(seed=1)
    entry = _entry(server.add("/w/tofu.pt", data))  # no published hash
    with caplog.at_level("WARNING", logger="robustarch.zoo.weights"):
        first = weights.fetch(entry)
    assert first.trust == "first-use" and "trust on first use" in caplog.text
    lock = json.loads(_cache.lock_path().read_text())
    assert lock["files"][entry.key]["sha256"] == {"": _sha(data)}
    assert lock["files"][entry.key]["origin"] == entry.url
    assert weights.fetch(entry).trust == "recorded"
    # the server now serves another file: deleting the cached copy and fetching again is refused
    first.path.unlink()
    server.add("/w/tofu.pt", _checkpoint(seed=2)[0])
    with pytest.raises(weights.HashMismatchError, match="recorded on first use"):
        weights.fetch(entry)
    assert not first.path.exists()


def test_prefix_only_entries_record_the_full_hash(server: Server) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/w/p.pt", data), file=f"p-{_sha(data)[:8]}.pt", sha256_prefix=_sha(data)[:8])
    assert weights.fetch(entry).trust == "prefix"
    assert json.loads(_cache.lock_path().read_text())["files"][entry.key]["sha256"] == {"": _sha(data)}
    assert weights.fetch(entry).trust == "recorded"


def test_an_html_page_is_refused_with_the_drive_explanation(server: Server) -> None:
    entry = _entry(server.add("/w/page.pt", QUOTA_HTML.encode()))
    with pytest.raises(RobustarchError) as err:
        weights.fetch(entry)
    message = str(err.value)
    assert "is an HTML page" in message and "Quota exceeded" in message and "gdown" in message
    assert "allow_pickle" not in message
    assert not weights.cached_path(entry).exists()
    assert not _cache.lock_path().exists()  # an HTML page is never trusted on first use


def test_drive_confirmation_page_is_followed_without_gdown(server: Server, monkeypatch) -> None:
    data, _ = _checkpoint()
    server.add("/drive-files/FILEID", data)
    monkeypatch.setattr(_fetch, "DRIVE_DOWNLOAD_URL", server.url("/drive") + "?id={id}&export=download")
    entry = _entry(None, kind="drive", drive_id="FILEID", sha256=_sha(data))
    assert weights.fetch(entry).path.read_bytes() == data
    assert server.requests["/drive"] == 1 and server.requests["/drive-confirm"] == 1


def test_drive_through_gdown_and_its_html_answer(monkeypatch) -> None:
    """gdown is used when installed; what it saves still goes through the content check."""
    data, _ = _checkpoint()
    calls = []

    class FakeGdown:
        @staticmethod
        def download(id: str, output: str, quiet: bool, resume: bool) -> str:
            calls.append(id)
            Path(output).write_bytes(data if id == "GOOD" else QUOTA_HTML.encode())
            return output

    monkeypatch.setattr(_fetch, "gdown_module", lambda: FakeGdown)
    assert (
        weights.fetch(_entry(None, kind="drive", drive_id="GOOD", sha256=_sha(data))).path.read_bytes()
        == data
    )
    with pytest.raises(RobustarchError, match="Quota exceeded"):
        weights.fetch(_entry(None, kind="drive", drive_id="BAD", file="bad.pt"))
    assert calls == ["GOOD", "BAD"]


def test_offline_mode_never_touches_the_network(server: Server, monkeypatch, registry) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/w/o.pt", data), sha256=_sha(data))
    registry(entry)
    monkeypatch.setenv("ROBUSTARCH_OFFLINE", "1")
    with pytest.raises(weights.OfflineError) as err:
        zoo.load("resnet18", "cifar10", weights="loopback")
    message = str(err.value)
    assert "offline mode is on" in message and "resnet18-test.pt" in message and entry.url in message
    assert str(weights.cached_path(entry)) in message
    with pytest.raises(weights.OfflineError, match="offline mode is on"):
        weights.fetch_url(server.url("/w/o.pt"))
    assert sum(server.requests.values()) == 0
    monkeypatch.delenv("ROBUSTARCH_OFFLINE")
    with pytest.raises(weights.OfflineError, match="downloads are off"):
        weights.resolve("resnet18", "cifar10", download=False)
    assert sum(server.requests.values()) == 0
    weights.fetch(entry)  # online again: now it is cached, and offline mode finds it
    monkeypatch.setenv("ROBUSTARCH_OFFLINE", "1")
    assert zoo.load("resnet18", "cifar10", weights=True).weights_entry == entry
    assert server.requests["/w/o.pt"] == 1


def test_a_local_mirror_folder_is_searched_first_and_is_not_network(
    server: Server, tmp_path: Path, monkeypatch
) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.url("/never/requested.pt"), sha256=_sha(data))
    mirror = tmp_path / "mirror"
    (mirror / entry.relpath).parent.mkdir(parents=True)
    (mirror / entry.relpath).write_bytes(data)  # the cache's layout
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", str(mirror))
    monkeypatch.setenv("ROBUSTARCH_OFFLINE", "1")
    result = weights.fetch(entry)
    assert result.how == "mirror" and result.path == mirror / entry.relpath
    # a flat folder holding the registry's file name works too
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / entry.file).write_bytes(data)
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", "file://" + str(flat))
    assert weights.fetch(entry).path == flat / entry.file
    # a damaged mirror copy is refused like any other
    (flat / entry.file).write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(weights.HashMismatchError, match="mirror"):
        weights.fetch(entry)
    assert sum(server.requests.values()) == 0


def test_a_url_mirror_is_tried_first_then_the_origin(server: Server, monkeypatch) -> None:
    data, _ = _checkpoint()
    entry = _entry(server.add("/origin/o.pt", data), sha256=_sha(data))
    server.add("/mirror/" + entry.relpath.as_posix(), data)
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", server.url("/mirror/"))
    assert weights.fetch(entry).how == "downloaded"
    assert (
        server.requests["/mirror/" + entry.relpath.as_posix()] == 1 and server.requests["/origin/o.pt"] == 0
    )
    # a mirror without the file: 404 for both layouts, then the origin
    other = _entry(server.add("/origin/p.pt", data), file="p.pt", model="resnet50")
    weights.fetch(other)
    assert server.requests["/mirror/p.pt"] == 1 and server.requests["/origin/p.pt"] == 1


def test_archive_member_extracted_safely(server: Server, registry) -> None:
    data, _ = _checkpoint()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("state_dicts/resnet18.pt", data)
        z.writestr("state_dicts/resnet50.pt", b"other")
    archive = {"pack": {"url": server.add("/a/state_dicts.zip", buf.getvalue()), "file": "state_dicts.zip"}}
    entry = _entry(
        None, kind="archive", archive="pack", member="state_dicts/resnet18.pt", mean=[0.5] * 3, std=[0.25] * 3
    )
    registry(entry, archives=archive)
    model = zoo.load("resnet18", "cifar10", weights=True)
    assert model.mean.flatten().tolist() == [0.5] * 3  # the source's own normalization
    assert weights.cached_path(entry).read_bytes() == data
    # the archive is kept and verified (first use) for the next member
    assert (
        json.loads(_cache.lock_path().read_text())["files"]["archive/pack"]["origin"]
        == archive["pack"]["url"]
    )
    weights.cached_path(entry).unlink()
    weights.fetch(entry)
    assert server.requests["/a/state_dicts.zip"] == 1
    # an archive with a member escaping the target folder is refused before anything is extracted
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.pt", data)
        z.writestr("state_dicts/resnet18.pt", data)
    evil_entry = replace(entry, archive="evil", source="evil")
    registry(
        evil_entry, archives={"evil": {"url": server.add("/a/evil.zip", evil.getvalue()), "file": "evil.zip"}}
    )
    with pytest.raises(RobustarchError, match="outside the target folder"):
        weights.fetch(evil_entry)
    assert not weights.cached_path(evil_entry).exists()


def test_a_checkpoint_url_is_cached_by_url(server: Server) -> None:
    data, logits = _checkpoint()
    url = server.add("/any/ckpt.pt", data)
    model = zoo.load("resnet18", "cifar10", weights=url, width=8)
    with torch.no_grad():
        assert torch.equal(model(_images()), logits)
    assert weights.resolve("resnet18", "cifar10", url) == weights.fetch_url(url)
    assert server.requests["/any/ckpt.pt"] == 1


def test_a_missing_file_is_reported_without_retries(server: Server) -> None:
    with pytest.raises(_fetch.NotFoundError, match="404"):
        weights.fetch(_entry(server.url("/missing.pt")))
    assert server.requests["/missing.pt"] == 1


def test_drive_folders_through_gdown_member_by_path_and_whole_model_folders(
    tmp_path: Path, monkeypatch
) -> None:
    """A file inside a Drive folder is found by its path in gdown's listing; an authors' model folder
    (net_config + weights.pt) is downloaded whole, checked and renamed into the cache."""
    data, _ = _checkpoint()
    folder = {  # what a Drive folder holds: path -> (file id, bytes)
        "darts/pretrained/cifar10.pt": ("ID1", data),
        "pdarts/pretrained/cifar10.pt": ("ID2", b"pdarts"),
        "pcdarts/pretrained/cifar10.pt": ("ID3", b"pcdarts"),
    }

    class Listed:
        def __init__(self, path: str, id: str) -> None:
            self.path, self.id = path, id

    class FakeGdown:
        @staticmethod
        def download_folder(
            id: str, output: str, quiet: bool, skip_download: bool = False, resume: bool = False
        ) -> list:
            if skip_download:
                return [Listed(p, fid) for p, (fid, _) in folder.items()]
            out = Path(output)
            out.mkdir(parents=True, exist_ok=True)
            (out / "net_config").write_text("[[16, 16], 'mbconv_k3_t1', [], 0, 1]\nnet_type: mbv2\n")
            (out / "weights.pt").write_bytes(data)
            return [str(out / "net_config"), str(out / "weights.pt")]

        @staticmethod
        def download(id: str, output: str, quiet: bool, resume: bool) -> str:
            Path(output).write_bytes(next(d for fid, d in folder.values() if fid == id))
            return output

    monkeypatch.setattr(_fetch, "gdown_module", lambda: FakeGdown)
    member = _entry(
        None, kind="drive-folder", drive_id="FOLDER", member="darts/*cifar10.pt", file="darts-cifar10.pt"
    )
    assert weights.fetch(member).path.read_bytes() == data  # not pdarts/ nor pcdarts/
    ambiguous = replace(member, member="*cifar10.pt", file="any.pt")
    with pytest.raises(_fetch.FetchError, match=r"several files match.*pdarts/pretrained/cifar10\.pt"):
        weights.fetch(ambiguous)
    absent = replace(member, member="nsga_net/*cifar10.pt", file="n.pt")
    with pytest.raises(_fetch.FetchError, match="no file matches"):
        weights.fetch(absent)
    whole = _entry(
        None,
        kind="drive-folder",
        drive_id="DN",
        file="DenseNAS-A",
        format="folder",
        files=["net_config", "weights.pt"],
    )
    result = weights.fetch(whole)
    assert result.path.is_dir() and sorted(p.name for p in result.path.iterdir()) == [
        "net_config",
        "weights.pt",
    ]
    assert set(result.sha256) == {"net_config", "weights.pt"} and result.trust == "first-use"
    assert weights.fetch(whole).how == "cached"
    # folders need gdown: without it the error says how to get it
    monkeypatch.setattr(_fetch, "gdown_module", lambda: None)
    with pytest.raises(_fetch.FetchError, match=r"needs gdown.*robustarch\[drive\]"):
        weights.fetch(replace(whole, file="DenseNAS-B"))
