"""The preprocessed-tensor cache: built once (a second pass decodes nothing), keyed by what changes the
tensors, and safe against a build killed mid-write or a damaged entry (detected, removed, rebuilt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import robustarch.data as rdata
from robustarch.data import _images, cache
from test_data_helpers import random_image


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(4)
    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(20):
            random_image(rng, 48 + i, 40).save(tmp_path / "imgs" / cls / f"{i:02d}.jpg", "JPEG", quality=85)
    return tmp_path / "imgs"


@pytest.fixture
def decodes(monkeypatch):
    """Counts JPEG/PNG decodes done by the loaders."""
    calls = []
    real = _images.decode

    def counting(data, name, mode="RGB"):
        calls.append(name)
        return real(data, name, mode)

    monkeypatch.setattr(_images, "decode", counting)
    return calls


def _load(folder, cache_dir, **kw):
    return rdata.load("imagefolder", folder, image_size=32, resize=36, cache=cache_dir, **kw)


def test_second_pass_reads_no_image(folder, tmp_path, decodes):
    direct, _ = rdata.load("imagefolder", folder, image_size=32, resize=36)
    expected = direct.uint8()
    assert len(decodes) == 60
    decodes.clear()
    first, spec = _load(folder, tmp_path / "cache")
    assert len(decodes) == 60 and first.is_decoded
    decodes.clear()
    second, spec2 = _load(folder, tmp_path / "cache")
    assert decodes == []  # served from the memory-mapped cache
    assert isinstance(second.uint8(), torch.Tensor) and second.uint8().dtype == torch.uint8
    assert torch.equal(second.uint8(), expected) and spec2 == spec
    assert second.labels.tolist() == direct.labels.tolist()
    assert second.example_ids.tolist() == direct.example_ids.tolist()
    x, y = second[5]
    assert torch.equal(x, expected[5].float() / 255) and y == int(direct.labels[5])
    assert decodes == []
    (entry,) = cache.list_entries(tmp_path / "cache")
    assert entry["fields"]["dataset"] == "imagefolder" and entry["n"] == 60


def test_key_follows_subset_preprocessing_and_files(folder, tmp_path, decodes):
    _load(folder, tmp_path / "c")
    _load(folder, tmp_path / "c", subset="balanced:9:1")
    rdata.load("imagefolder", folder, image_size=32, resize=40, cache=tmp_path / "c")
    assert len(cache.list_entries(tmp_path / "c")) == 3
    decodes.clear()
    img = folder / "b" / "03.jpg"
    random_image(np.random.default_rng(99), 50, 40).save(img, "JPEG")
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    ds, _ = _load(folder, tmp_path / "c")  # a rewritten file is a new key: decoded again, not stale
    assert len(decodes) == 60 and len(cache.list_entries(tmp_path / "c")) == 4
    direct, _ = rdata.load("imagefolder", folder, image_size=32, resize=36)
    assert torch.equal(ds.uint8(), direct.uint8())


def _only_entry(cache_dir):
    (entry,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    return entry


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "bad-manifest", "labels"])
def test_damaged_entry_is_detected_and_rebuilt(folder, tmp_path, decodes, damage, caplog):
    ref, _ = _load(folder, tmp_path / "c")
    expected = ref.uint8().clone()
    del ref
    entry = _only_entry(tmp_path / "c")
    images = entry / "images.u8"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(images.read_bytes())
        data[len(data) // 2] ^= 0xFF
        images.write_bytes(bytes(data))
        cache._verified.clear()  # a new process would check the sha256 again
    elif damage == "no-manifest":
        (entry / "manifest.json").unlink()
    elif damage == "bad-manifest":
        (entry / "manifest.json").write_text("{not json")
    else:
        np.save(entry / "labels.npy", np.zeros(60, dtype=np.int64))
    decodes.clear()
    with caplog.at_level("WARNING", logger="robustarch.data.cache"):
        ds, _ = _load(folder, tmp_path / "c")
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert len(decodes) == 60 and torch.equal(ds.uint8(), expected)
    decodes.clear()
    _load(folder, tmp_path / "c")
    assert decodes == []


def test_build_killed_mid_write_is_detected_and_rebuilt(folder, tmp_path, decodes):
    """A real crash: a child process is SIGKILLed while writing the cache (no cleanup code runs)."""
    script = textwrap.dedent(f"""
        import os, signal
        from robustarch.data import _dataset
        import robustarch.data as rdata
        real, count = _dataset.EncodedImages.read, [0]
        def read(self, k):
            count[0] += 1
            if count[0] == 25:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, k)
        _dataset.EncodedImages.read = read
        rdata.load("imagefolder", {str(folder)!r}, image_size=32, resize=36, cache={str(tmp_path / "c")!r},
                   threads=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    leftovers = [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # never a half-written entry under the key
    assert "problem" in cache.list_entries(tmp_path / "c")[0]
    decodes.clear()
    ds, _ = _load(folder, tmp_path / "c")
    assert len(decodes) == 60
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir() and ".tmp-" in p.name] == []
    direct, _ = rdata.load("imagefolder", folder, image_size=32, resize=36)
    assert torch.equal(ds.uint8(), direct.uint8())
    manifest = json.loads((_only_entry(tmp_path / "c") / "manifest.json").read_text())
    assert manifest["n"] == 60 and manifest["image_size"] == [3, 32, 32]


def test_clear_removes_entries(folder, tmp_path):
    _load(folder, tmp_path / "c")
    assert cache.clear(tmp_path / "c") == 1 and cache.list_entries(tmp_path / "c") == []


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTARCH_CACHE", str(tmp_path / "x"))
    assert cache.default_cache_dir() == tmp_path / "x"
