"""``robustarch weights list | fetch | verify | path | convert`` as a user runs them, against local mirror
folders and imported files (no network): JSON fields, trust on first use said in the output, a corrupted
cache found by verify, a study's sources fetched, and a .safetensors conversion that loads to the same
network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustarch import zoo
from robustarch.cli import main
from robustarch.zoo import weights


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ROBUSTARCH_HOME", str(home))
    monkeypatch.setenv("ROBUSTARCH_OFFLINE", "1")  # these tests never need the network
    monkeypatch.delenv("ROBUSTARCH_WEIGHTS_MIRROR", raising=False)
    return home


def _small_checkpoint(
    path: Path, name: str = "darts", dataset: str = "cifar10", seed: int = 0
) -> torch.Tensor:
    torch.manual_seed(seed)
    spec = zoo.get_spec(name, dataset)
    model = zoo.load(name, dataset, **spec.quick_overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(zoo.unwrap(model).state_dict(), path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["weights", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_json_has_the_documented_fields(capsys) -> None:
    code, out, _ = _run(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(weights.entries())
    for row in rows:
        assert {"model", "dataset", "source", "file", "sha256", "url", "default", "licence", "cached"} <= set(
            row
        )
    by_key = {(r["model"], r["dataset"], r["source"]): r for r in rows}
    tv = by_key[("resnet18", "imagenet", "torchvision")]
    assert tv["url"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert tv["sha256"] is None and tv["sha256_prefix"] == "f37072fd"  # null: not pinned in full
    assert by_key[("resnet18", "imagenet", "timm")]["sha256"].startswith("694f673d")
    assert by_key[("pc_darts", "cifar10", "authors")]["url"] is None  # no public file
    code, out, _ = _run(capsys, "list", "--dataset", "cifar10-jpeg", "--json")
    assert {r["dataset"] for r in json.loads(out)} == {"cifar10"}
    code, out, _ = _run(capsys, "list", "--dataset", "imagenet")
    assert code == 0 and "resnet18-f37072fd.pth" in out and "torchvision*" in out


def test_unknown_names_are_errors_with_close_names(capsys) -> None:
    code, _, err = _run(capsys, "list", "--source", "torchvison")
    assert code == 2 and "Did you mean 'torchvision'" in err
    code, _, err = _run(capsys, "fetch", "resnet18", "--dataset", "imagenet", "--source", "tim")
    assert code == 2 and "'timm'" in err


def test_fetch_from_a_mirror_then_verify_then_a_corrupted_cache(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = weights.lookup("darts", "cifar10", "authors")
    mirror = tmp_path / "mirror"
    _small_checkpoint(mirror / entry.file)  # a flat mirror folder of the registry's file names
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", str(mirror))
    code, out, _ = _run(capsys, "fetch", "darts", "--dataset", "cifar10")
    assert code == 0 and "darts on cifar10 from authors: mirror" in out and "trust on first use" in out
    assert str(mirror / entry.file) in out
    # import into the cache (a copy a user downloaded by hand); the hash recorded from the mirror holds
    code, out, _ = _run(capsys, "fetch", "darts", "--dataset", "cifar10", "--file", str(mirror / entry.file))
    assert code == 0 and "imported" in out and "recorded on first use" in out
    code, out, _ = _run(capsys, "path", "darts", "--dataset", "cifar10")
    assert code == 0 and out.strip() == str(weights.cached_path(entry))
    code, out, _ = _run(capsys, "verify", "darts")
    assert code == 0 and "ok        darts on cifar10 from authors (recorded)" in out
    # a flipped byte in the cached copy: verify says so, and loading refuses it
    path = weights.cached_path(entry)
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    code, out, _ = _run(capsys, "verify")
    assert code == 1 and "mismatch  darts on cifar10 from authors: sha256 mismatch" in out
    with pytest.raises(weights.HashMismatchError):
        zoo.load("darts", "cifar10", weights="authors", C=4, layers=4)


def test_path_and_fetch_offline_name_the_file_and_where_to_get_it(capsys) -> None:
    code, out, err = _run(capsys, "path", "resnet18", "--dataset", "imagenet")
    assert code == 1 and out.strip().endswith("torchvision/resnet18/imagenet/resnet18-f37072fd.pth")
    assert "offline mode is on" in err and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    code, _, err = _run(capsys, "fetch", "vgg16_bn", "--dataset", "cifar100")
    assert code == 2 and "no public file" in err and "fastai" in err


def test_fetch_study_reports_each_model(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = tmp_path / "mini.toml"
    study.write_text(
        """
[study]
name = "mini"
[[datasets]]
name = "cifar10"
root = "data"
models = [
  { name = "darts", weights = "authors" },
  { name = "nsga_net", weights = true },
  { name = "resnet18", weights = "{weights}/cifar10/resnet18.pt" },
  { name = "pdarts" },
]
"""
    )
    mirror = tmp_path / "mirror"
    _small_checkpoint(mirror / weights.lookup("darts", "cifar10").relpath)
    monkeypatch.setenv("ROBUSTARCH_WEIGHTS_MIRROR", str(mirror))
    code, out, err = _run(capsys, "fetch", "--study", str(study))
    assert code == 1  # nsga_net's file is in no mirror and the network is off
    assert "darts on cifar10 from authors: mirror" in out
    assert "cifar10 / nsga_net: FAILED (authors): offline mode is on" in err
    assert "cifar10 / resnet18: skipped" in out and "cifar10 / pdarts: skipped" in out
    assert "1 ready, 1 failed, 2 skipped" in out


def test_convert_writes_safetensors_that_load_to_the_same_network(capsys, tmp_path: Path) -> None:
    src = tmp_path / "dp.pt"
    torch.manual_seed(0)
    model = zoo.load("resnet18", "cifar10", width=8)
    torch.save({"state_dict": {f"module.{k}": v for k, v in zoo.unwrap(model).state_dict().items()}}, src)
    out_path = tmp_path / "clean.safetensors"
    code, out, _ = _run(
        capsys,
        "convert",
        str(src),
        str(out_path),
        "--model",
        "resnet18",
        "--dataset",
        "cifar10",
        "--override",
        "width=8",
    )
    assert code == 0 and f"wrote {out_path}" in out
    from safetensors import safe_open

    with safe_open(str(out_path), framework="pt") as f:
        assert not any(k.startswith("module.") for k in f.keys())  # noqa: SIM118
    x = torch.rand(2, 3, 32, 32)
    again = zoo.load("resnet18", "cifar10", weights=out_path)  # the recorded width=8 rebuilds it
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # without --model the keys are kept as they are
    raw = tmp_path / "raw.safetensors"
    assert _run(capsys, "convert", str(src), str(raw))[0] == 0
    with safe_open(str(raw), framework="pt") as f:
        assert all(k.startswith("module.") for k in f.keys())  # noqa: SIM118
    code, _, err = _run(capsys, "convert", str(src), str(tmp_path / "x.pt"))
    assert code == 2 and "must end in .safetensors" in err


def test_the_cli_module_imports_no_torch() -> None:
    """`robustarch --help` stays fast: the weights commands import torch only when they run."""
    import subprocess
    import sys

    code = "import sys, robustarch.cli; robustarch.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
