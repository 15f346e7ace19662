"""``robustarch data list | check | cache build/list/clear`` through the data part's ``register``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from robustarch.cli import data as cli
from robustarch.errors import RobustarchError
from test_data_helpers import random_image, write_idx


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="robustarch")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def fmnist(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10000, 28, 28)), True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 1000), True)
    return tmp_path


def test_list(capsys):
    assert run("data", "list") == 0
    out = capsys.readouterr().out
    assert "cifar10-jpeg" in out and "CIFAR-10 (JPEG q75)" in out and "imagenet" in out


def test_check_reports_counts_and_absent_splits(fmnist, capsys):
    assert run("data", "check", "fashion-mnist", "--data-root", str(fmnist), "--counts") == 0
    out = capsys.readouterr().out
    assert "test: 10000 examples, 1000 per class" in out and "Ankle boot" in out
    assert "train: absent" in out and out.strip().endswith("ok")
    with pytest.raises(RobustarchError, match="train-images-idx3-ubyte"):
        run("data", "check", "fashion-mnist", "--data-root", str(fmnist), "--split", "train")
    with pytest.raises(RobustarchError, match="Did you mean 'fashion-mnist'"):
        run("data", "check", "fashion_mnist", "--data-root", str(fmnist))
    with pytest.raises(RobustarchError, match="imagefolder only"):
        run("data", "check", "fashion-mnist", "--data-root", str(fmnist), "--resize", "3")


def test_check_decode_finds_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("x", "y"):
        (tmp_path / cls).mkdir()
        random_image(rng, 16, 16).save(tmp_path / cls / "1.png")
    (tmp_path / "y" / "2.png").write_bytes(b"not a png")
    assert run("data", "check", "imagefolder", "--data-root", str(tmp_path), "--image-size", "16") == 0
    with pytest.raises(RobustarchError, match=r"y/2\.png"):
        run("data", "check", "imagefolder", "--data-root", str(tmp_path), "--image-size", "16", "--decode")


def test_cache_build_list_clear(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("x", "y"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            random_image(rng, 20, 24).save(tmp_path / "d" / cls / f"{i}.jpg")
    c = str(tmp_path / "cache")
    common = [
        "--data-root",
        str(tmp_path / "d"),
        "--image-size",
        "3,16,16",
        "--resize",
        "16",
        "--cache-dir",
        c,
    ]
    assert run("data", "cache", "build", "imagefolder", *common, "--subset", "first:4") == 0
    assert "cached 4 images" in capsys.readouterr().out
    assert run("data", "cache", "list", "--cache-dir", c) == 0
    out = capsys.readouterr().out
    assert "imagefolder" in out and "first:4" in out and "4 x (3, 16, 16)" in out
    assert run("data", "cache", "clear", "--cache-dir", c) == 0
    assert "removed 1 cache entries" in capsys.readouterr().out
