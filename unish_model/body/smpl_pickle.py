"""The official SMPL `.pkl` -> the `.npz` layout `BodyModel.from_file` reads (`model.py`), without running code
from the file.

The pickle holds numpy arrays, chumpy arrays and a scipy sparse `J_regressor`.  It is read with a restricted
unpickler (`unish_model.benchmarks.safe_unpickle`) that builds only numpy arrays, builtin containers and inert
stand-ins for the chumpy and scipy classes (each keeps the state dict the pickle hands it; nothing of the original
class runs); the arrays are then densified and written as a plain `.npz`, checked by loading it.

    python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from unish_model.body.model import REQUIRED_KEYS, BodyModel

__all__ = ["smpl_arrays_from_pickle", "convert_smpl_pickle", "main"]


class _Stub:
    """Stands in for a class the SMPL pickle names (chumpy's Ch, scipy's sparse matrices): it only keeps the
    state dict the pickle hands it; nothing of the original class runs."""

    kind = "stub"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.state: dict = {}

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if not isinstance(state, dict):
            raise ValueError(f"unexpected pickled state for a {self.kind}")
        self.state = state


class _ChumpyArray(_Stub):
    kind = "chumpy array"


class _SparseMatrix(_Stub):
    kind = "sparse matrix"


def _smpl_unpickler_class() -> type:
    from unish_model.benchmarks.safe_unpickle import RestrictedUnpickler

    stubs: dict[tuple[str, str], type] = {("chumpy.ch", "Ch"): _ChumpyArray, ("chumpy", "Ch"): _ChumpyArray}
    for module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"):
        stubs[(module, module.rsplit(".", 1)[1].lstrip("_") + "_matrix")] = _SparseMatrix

    def reconstructor(cls: type, base: type, state: object) -> object:
        # protocol 0/1 pickles build objects through copy_reg._reconstructor: allow it for the stubs only
        if cls not in stubs.values() or base is not object or state is not None:
            raise ValueError("refusing copy_reg._reconstructor for anything but SMPL's array types")
        return cls()

    class SmplUnpickler(RestrictedUnpickler):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> object:
            if (module, name) in stubs:
                return stubs[(module, name)]
            if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
                return reconstructor
            if (module, name) in (("__builtin__", "object"), ("builtins", "object")):
                return object  # only as _reconstructor's base argument; a bare object() is inert
            return super().find_class(module, name)

    return SmplUnpickler


def _plain(value: object, key: str) -> np.ndarray:
    if isinstance(value, _ChumpyArray):
        if "x" not in value.state:
            raise ValueError(f"'{key}' is a chumpy expression, not a plain chumpy array")
        return np.asarray(value.state["x"])
    if isinstance(value, _SparseMatrix):
        st = value.state
        shape = tuple(st.get("_shape", st.get("shape", ())))
        data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
        dense = np.zeros(shape, dtype=np.float64)
        compressed_rows = st.get("format", "csc") == "csr"
        for j in range(len(indptr) - 1):
            rows = indices[indptr[j]: indptr[j + 1]]
            if compressed_rows:
                dense[j, rows] = data[indptr[j]: indptr[j + 1]]
            else:
                dense[rows, j] = data[indptr[j]: indptr[j + 1]]
        return dense
    return np.asarray(value)


def smpl_arrays_from_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Read the official SMPL `.pkl` with a restricted unpickler (numpy arrays, builtin containers, and stand-ins
    for chumpy arrays and scipy sparse matrices: no code from the file runs) -> the `.npz` arrays."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            data = _smpl_unpickler_class()(f, encoding="latin1").load()
        except Exception as e:  # noqa: BLE001 - report any refusal or corruption with the file's name
            raise ValueError(f"SMPL pickle {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"SMPL pickle {path}: expected a dict, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise KeyError(f"SMPL pickle {path} has no {', '.join(missing)} (has: {', '.join(sorted(map(str, data)))})")
    try:
        return {k: _plain(data[k], k) for k in REQUIRED_KEYS}
    except (KeyError, ValueError) as e:
        raise ValueError(f"SMPL pickle {path}: {e}") from e


def convert_smpl_pickle(src: str | Path, dst: str | Path) -> Path:
    """Official SMPL `.pkl` -> `.npz` in the layout `BodyModel.from_file` reads (checked by loading it)."""
    arrays = smpl_arrays_from_pickle(src)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    BodyModel.from_file(tmp)  # fails here, naming the problem, rather than at the first use
    tmp.replace(dst)
    return dst


def main(argv: list[str]) -> int:
    """`python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz`"""
    if len(argv) != 2:
        print("usage: python -m unish_model.body SMPL_NEUTRAL.pkl SMPL_NEUTRAL.npz", file=sys.stderr)
        return 1
    print(convert_smpl_pickle(argv[0], argv[1]))
    return 0
