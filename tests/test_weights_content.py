"""What a weight file holds is judged from its bytes before anything is unpickled: HTML and text pages, empty
and truncated files, foreign archives each get a clear error (never the allow_pickle advice), and
.safetensors files load with no pickle at all."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.errors import RobustarchError
from robustarch.zoo._checkpoint import check_weight_file, read_checkpoint


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return zoo.unwrap(zoo.load("resnet18", "cifar10", width=8)).state_dict()


def _saved(tmp_path: Path, name: str = "ok.pt", **kw: object) -> Path:
    path = tmp_path / name
    torch.save(_state(), path, **kw)  # type: ignore[arg-type]
    return path


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# (file bytes, phrases the message must contain)
BAD_FILES = {
    "empty": (b"", ["is empty (0 bytes)"]),
    "drive-virus-page": (
        b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        b"<body>Google Drive can't scan this file for viruses.</body></html>",
        ["is an HTML page", "'Google Drive - Virus scan warning'", "Quota exceeded", "gdown"],
    ),
    "other-html": (
        b"\n  <html><head><title>404 Not Found</title></head><body>nginx</body></html>",
        ["is an HTML page", "'404 Not Found'", "web page"],
    ),
    "lfs-pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 44800000\n",
        ["Git LFS pointer", "git lfs pull"],
    ),
    "text": (b"Access denied\n", ["is a text file", "'Access denied'"]),
    "zip-of-checkpoints": (
        _zip({"state_dicts/resnet18.pt": b"x", "state_dicts/vgg16_bn.pt": b"y"}),
        ["zip archive but not a torch checkpoint", "state_dicts/resnet18.pt", "extract it"],
    ),
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(100), ["gzip/tar archive"]),
    "binary-noise": (bytes(range(256)) * 4, ["not a checkpoint robustarch can read"]),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_named_for_what_they_are(kind: str, tmp_path: Path) -> None:
    data, phrases = BAD_FILES[kind]
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    with pytest.raises(RobustarchError) as err:
        zoo.load("resnet18", "cifar10", weights=path, width=8)
    message = str(err.value)
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    assert "allow_pickle" not in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoints_are_reported_as_truncated(legacy: bool, tmp_path: Path) -> None:
    kw = {"_use_new_zipfile_serialization": False} if legacy else {}
    full = _saved(tmp_path, **kw).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(RobustarchError, match="truncated or corrupt") as err:
        read_checkpoint(cut)
    assert "allow_pickle" not in str(err.value)
    assert check_weight_file(tmp_path / "ok.pt") == ("torch-legacy" if legacy else "torch-zip")


def test_pickled_code_still_gets_the_allow_pickle_advice(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(RobustarchError, match="pass allow_pickle=True"):
        read_checkpoint(path)


def test_safetensors_round_trip_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = zoo.load("resnet18", "cifar10", width=8)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    meta = {"model": "resnet18", "overrides": {"width": 8}}
    path = zoo.save_safetensors(zoo.unwrap(model).state_dict(), tmp_path / "m.safetensors", meta)
    assert check_weight_file(path) == "safetensors"

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be called for safetensors")

    monkeypatch.setattr(torch, "load", no_pickle)
    again = zoo.load("resnet18", "cifar10", weights=path)  # the overrides come from the file's metadata
    assert again.checkpoint_metadata == meta
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # a truncated safetensors file says so
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:20])
    with pytest.raises(RobustarchError, match="truncated safetensors"):
        read_checkpoint(cut)
    bad_meta = tmp_path / "bad.safetensors"
    header = json.dumps({"__metadata__": {"robustarch": "{not json"}}).encode()
    bad_meta.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(RobustarchError, match="holds no tensors"):
        read_checkpoint(bad_meta)


def test_model_folders_accept_safetensors_and_bin(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    zoo.save_safetensors(_state(), folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    state, _ = read_checkpoint(folder)
    assert set(state) == set(_state())
