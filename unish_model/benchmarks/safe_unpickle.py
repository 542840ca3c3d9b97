"""Restricted unpicklers for data files that only exist as pickles.

`RestrictedUnpickler` (EMDB annotations) builds numpy arrays, numpy scalars and dtypes, and builtin
containers (dict, list, tuple, set, str, bytes, numbers); every other global a pickle names is
refused before anything is called, so a pickle that would run code (os.system, eval, subprocess,
...) fails with `UnsafePickleError` and has no effect.

`load_string_array` (the object arrays of BEDLAM's label npz files: numpy stores an object array as
the pickled array) is stricter: the only globals it resolves are numpy's array reconstructor,
`ndarray` and `dtype`, and the array it builds must be an object array of `str`; anything else
(a dict, a number, a nested array) is refused with `UnsafePickleError`.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something outside the allowed set."""


def _numpy_helpers() -> dict[str, Any]:
    # Take numpy's own reconstructors from objects instead of importing private module paths,
    # which moved from numpy.core to numpy._core in numpy 2.
    return {
        "_reconstruct": np.array(0).__reduce__()[0],
        "scalar": np.float64(0).__reduce__()[0],
        "_frombuffer": np.arange(2).__reduce_ex__(5)[0],
    }


def _allowed() -> dict[tuple[str, str], Any]:
    helpers = _numpy_helpers()
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for name in ("set", "frozenset", "complex", "bytearray"):
        table[("builtins", name)] = getattr(builtins, name)
        table[("__builtin__", name)] = table[("builtins", name)]
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = helpers["_reconstruct"]
        table[(f"{core}.multiarray", "scalar")] = helpers["scalar"]
        table[(f"{core}.numeric", "_frombuffer")] = helpers["_frombuffer"]
    return table


_ALLOWED = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals in the allow-list."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only numpy arrays and builtin containers "
                "are allowed in this pickle"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def safe_load(source: BinaryIO | bytes) -> Any:
    """Unpickle from a binary file object or bytes with the restricted unpickler."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    return RestrictedUnpickler(stream, encoding="latin1").load()


def safe_load_path(path: str | Path) -> Any:
    """Unpickle a file; the error names the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return safe_load(f)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None


_STRING_ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    key: value for key, value in _ALLOWED.items()
    if key in {("numpy", "ndarray"), ("numpy", "dtype")} or key[1] == "_reconstruct"
}


class StringArrayUnpickler(pickle.Unpickler):
    """Resolves numpy's array reconstructor, ndarray and dtype, nothing else (see `load_string_array`)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STRING_ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only an object array of strings is "
                                    "allowed here") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def load_string_array(stream: BinaryIO, what: str = "object array") -> np.ndarray:
    """An object array of str from its pickle (what `np.save` writes after the .npy header of an object array),
    returned as a numpy unicode array; `UnsafePickleError` naming `what` for any other content."""
    try:
        obj = StringArrayUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{what}: {err}") from None
    except Exception as err:  # a truncated or malformed pickle
        raise UnsafePickleError(f"{what}: not a readable pickled array ({type(err).__name__}: {err})") from None
    if not isinstance(obj, np.ndarray) or obj.dtype != object:
        raise UnsafePickleError(f"{what}: expected an object array of strings, got {type(obj).__name__}")
    bad = next((type(x).__name__ for x in obj.flat if not isinstance(x, str)), None)
    if bad is not None:
        raise UnsafePickleError(f"{what}: the object array holds a {bad}; only strings are allowed")
    return obj.astype(str) if obj.size else np.zeros(obj.shape, dtype="<U1")
