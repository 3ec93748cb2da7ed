"""The one reader of pickle files in vidkd: plain data, and numpy arrays where the caller asks for them.

`pickle.load` calls whatever callables a pickle names (`os.system`, `open`, ...). This reader resolves only
the names below and refuses any other with UnsafePickleError, naming the file and the `module.name`, before
anything is called. Bytes need protocol 3 or later (protocols 0-2 store them through `_codecs.encode`,
which is refused). Torch checkpoints are read by `torch.load(..., weights_only=True)`, torch's own
restricted reader; every other pickle vidkd reads goes through `load` here.
"""
import io
import pickle

import numpy
from numpy._core import multiarray, numeric

from vidkd.errors import CheckpointError, UnsafePickleError

# Builtins that plain-data pickles name: sets before protocol 4, complex numbers, bytearrays before protocol 5.
PLAIN = {("builtins", t.__name__): t for t in (set, frozenset, complex, bytearray)}
# What numpy arrays, dtypes and scalars pickle as: `_reconstruct` then ndarray.__setstate__ (protocols 2-4),
# `_frombuffer` (protocol 5); numpy 1 wrote `numpy.core`, numpy 2 writes `numpy._core`.
NUMPY = {("numpy", "ndarray"): numpy.ndarray, ("numpy", "dtype"): numpy.dtype}
for _core in ("numpy.core", "numpy._core"):
    NUMPY.update({(f"{_core}.multiarray", "_reconstruct"): multiarray._reconstruct,
                  (f"{_core}.multiarray", "scalar"): multiarray.scalar,
                  (f"{_core}.numeric", "_frombuffer"): numeric._frombuffer})


def load(path, allow_numpy=False):
    """The object pickled in the file `path`: dict, list, tuple, str, bytes, int, float, bool, None, set,
    frozenset, complex, bytearray and, with `allow_numpy`, numpy arrays (plain ndarray only) and scalars.

    Raises UnsafePickleError for anything else, CheckpointError for a missing, truncated or corrupt file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}")
    try:
        return _Unpickler(io.BytesIO(data), path, allow_numpy).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a truncated or corrupt pickle fails anywhere inside the unpickler, with any type
        raise CheckpointError(f"{path}: not a readable pickle (truncated or corrupt: {type(e).__name__}: {e})")


# The pure-Python unpickler: the C one keeps its memo in an array that a 9-byte pickle (one LONG_BINPUT
# with a large index) grows to gigabytes.
class _Unpickler(pickle._Unpickler):
    def __init__(self, file, path, allow_numpy):
        super().__init__(file)
        self.path, self.allowed = path, {**PLAIN, **(NUMPY if allow_numpy else {})}

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise UnsafePickleError(self.path, f"{module}.{name}")
        return self._plain_ndarray if found is multiarray._reconstruct else found

    def _plain_ndarray(self, subtype, *args):
        """`_reconstruct` of ndarray itself: a subclass would run its own `__array_finalize__` / `__setstate__`."""
        if subtype is not numpy.ndarray:
            raise UnsafePickleError(self.path, f"_reconstruct of {subtype!r}, not a plain numpy.ndarray")
        return multiarray._reconstruct(subtype, *args)
