"""Small file helpers shared by the loaders: checksums, fingerprints, a restricted unpickler."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import ClassVar

from robustarch.data.errors import ChecksumError, CorruptFileError


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_md5(name: str, actual: str, expected: str | None, table_kind: str) -> None:
    if expected is not None and actual != expected:
        raise ChecksumError(
            f"md5 of {name} is {actual}, the {table_kind} md5 is {expected}: the file is corrupt or not the "
            "original release (pass verify=False / --no-verify to skip the check, or md5={...} with your own "
            "sums)"
        )


def file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR release files contain (dicts, lists, str/bytes, numpy arrays): a
    pickle is a program, and a dataset file is not trusted to run arbitrary code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_pickle(data: bytes, name: str) -> object:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # any failure to parse means the file is not a valid release pickle
        raise CorruptFileError(f"cannot unpickle {name}: {type(err).__name__}: {err}") from err
