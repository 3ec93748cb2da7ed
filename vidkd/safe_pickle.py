"""The one reader of pickle files in vidkd: plain data, and numpy arrays where the caller asks for them.

`pickle.load` calls whatever callables a pickle names (`os.system`, `open`, ...). This reader resolves only
the names below and refuses any other with UnsafePickleError, naming the file and the `module.name`, before
anything is called. Bytes that Python 3 wrote at protocols 0-2 come through `_codecs.encode(text, "latin1")` and
`bytes()` (empty): both are resolved to guards that take exactly those arguments and refuse any other (`bytes(n)`
would allocate n bytes). Torch checkpoints are read by `torch.load(..., weights_only=True)`, torch's own
restricted reader; every other pickle vidkd reads goes through `load` here.
"""
import io
import pickle

import numpy
from numpy._core import multiarray, numeric

from vidkd.errors import CheckpointError, UnsafePickleError

# Builtins that plain-data pickles name: complex numbers; sets before protocol 4 and bytearrays before protocol 5
# through guards (`bytearray(n)` would allocate n bytes; every guard counts what it builds against a budget, so that
# calls repeated on one remembered argument cannot multiply a small file into gigabytes); `__builtin__` is their
# module's name in Python 2 and at protocols 0-2.
PLAIN = {(module, "complex"): complex for module in ("builtins", "__builtin__")}
BUDGET = (4, 2**20)  # the guards build at most 4 items (bytes, set members) per byte of the file, plus 1 Mi
# What numpy arrays, dtypes and scalars pickle as: `_reconstruct` then ndarray.__setstate__ (protocols 2-4),
# `_frombuffer` (protocol 5); numpy 1 wrote `numpy.core`, numpy 2 writes `numpy._core`. Each is resolved to a
# guard below: arrays, scalars and dtypes are built only through these paths and only with NUMERIC dtypes (an
# object array or scalar holds pointers, which a pickle can forge: touching one crashes the process).
NUMERIC = "biufc"
# Python 3's bytes at protocols 0-2 (`__builtin__`: the name Python 3 writes for builtins there)
BYTES_NAMES = {(module, name): name for module in ("builtins", "__builtin__")
               for name in ("bytes", "bytearray", "set", "frozenset")}
BYTES_NAMES[("_codecs", "encode")] = "encode"  # bool, signed and unsigned integers, floats, complex
NUMPY_NAMES = {("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype"}
for _core in ("numpy.core", "numpy._core"):
    NUMPY_NAMES.update({(f"{_core}.multiarray", "_reconstruct"): "_reconstruct",
                        (f"{_core}.multiarray", "scalar"): "scalar", (f"{_core}.numeric", "_frombuffer"): "_frombuffer"})


def load(path, allow_numpy=False, encoding="ASCII"):
    """The object pickled in the file `path`: dict, list, tuple, str, bytes, int, float, bool, None, set,
    frozenset, complex, bytearray and, with `allow_numpy`, numpy arrays (plain ndarray only) and scalars.
    `encoding`: how Python 2 strings load (pickle's own option; "bytes" keeps them bytes, as numpy's data needs).

    Raises UnsafePickleError for anything else, CheckpointError for a missing, truncated or corrupt file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}")
    try:
        return _Unpickler(io.BytesIO(data), path, allow_numpy, encoding, BUDGET[0] * len(data) + BUDGET[1]).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # a truncated or corrupt pickle fails anywhere inside the unpickler, with any type
        raise CheckpointError(f"{path}: not a readable pickle (truncated or corrupt: {type(e).__name__}: {e})")


# The pure-Python unpickler: the C one keeps its memo in an array that a 9-byte pickle (one LONG_BINPUT
# with a large index) grows to gigabytes.
class _Unpickler(pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, allow_numpy, encoding="ASCII", budget=BUDGET[1]):
        super().__init__(file, encoding=encoding)
        self.path, self.allow_numpy, self.budget = path, allow_numpy, budget
        self.guards = {"ndarray": self._ndarray_called, "dtype": self._dtype, "_reconstruct": self._reconstruct,
                       "scalar": self._scalar, "_frombuffer": self._frombuffer, "encode": self._encode,
                       "bytes": self._empty_bytes, "bytearray": self._bytearray,
                       "set": self._collection(set), "frozenset": self._collection(frozenset)}

    def _spend(self, items):
        """Count `items` built by a guard against the budget; refuse once it is spent."""
        self.budget -= items
        if self.budget < 0:
            raise UnsafePickleError(self.path, "more data built by calls than the file's size allows (a pickle "
                                               "repeating calls on one remembered argument)")

    def find_class(self, module, name):
        if (module, name) in PLAIN:
            return PLAIN[module, name]
        if self.allow_numpy and (module, name) in NUMPY_NAMES:
            return self.guards[NUMPY_NAMES[module, name]]
        if (module, name) in BYTES_NAMES:
            return self.guards[BYTES_NAMES[module, name]]
        raise UnsafePickleError(self.path, f"{module}.{name}")

    def _encode(self, *args):
        """`_codecs.encode(text, "latin1")`: Python 3's bytes pickled at protocols 0-2."""
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise UnsafePickleError(self.path, "_codecs.encode with arguments other than (text, 'latin1')")
        self._spend(len(args[0]))
        return args[0].encode("latin1")

    def _empty_bytes(self, *args):
        """`bytes()`: Python 3's empty bytes pickled at protocols 0-2."""
        if args:
            raise UnsafePickleError(self.path, "builtins.bytes called with arguments (only bytes() is plain data)")
        return b""

    def _bytearray(self, *args):
        """`bytearray()`, `bytearray(data)` (protocols 3-4) or `bytearray(text, "latin-1")` (0-2; the encoding's
        name as bytes where Python 2 strings load as bytes), nothing else."""
        if len(args) == 2 and isinstance(args[1], bytes):
            args = (args[0], args[1].decode("latin1"))
        if not args or (len(args) == 1 and isinstance(args[0], (bytes, bytearray))):
            data = bytearray(*args)
        elif len(args) == 2 and isinstance(args[0], (str, bytes)) and args[1] in ("latin1", "latin-1"):
            data = bytearray(args[0] if isinstance(args[0], bytes) else args[0].encode("latin1"))
        else:
            raise UnsafePickleError(self.path, "builtins.bytearray with arguments other than its data")
        self._spend(len(data))
        return data

    def _collection(self, kind):
        """`set(items)` / `frozenset(items)` (protocols 0-3), counted against the budget."""
        def build(*args):
            if len(args) > 1:
                raise UnsafePickleError(self.path, f"builtins.{kind.__name__} with more than one argument")
            if args:
                self._spend(len(args[0]) if hasattr(args[0], "__len__") else 0)
            return kind(*args)

        return build

    def _numeric(self, dtype, what):
        if not isinstance(dtype, numpy.dtype) or dtype.kind not in NUMERIC or dtype.hasobject:
            raise UnsafePickleError(self.path, f"{what} of dtype {dtype!r}, not a numeric dtype")
        return dtype

    def _ndarray_called(self, *args):
        """`numpy.ndarray` stands for the class that `_reconstruct` takes; called itself (shape, dtype, buffer),
        it would build an array over any bytes."""
        raise UnsafePickleError(self.path, "numpy.ndarray called directly, not through numpy's reconstruction")

    def _dtype(self, *args):
        return self._numeric(numpy.dtype(*args), "numpy.dtype")

    def _reconstruct(self, subtype, *args):
        """`_reconstruct` of ndarray itself: a subclass would run its own `__array_finalize__` / `__setstate__`."""
        if subtype is not self.guards["ndarray"]:
            raise UnsafePickleError(self.path, f"_reconstruct of {subtype!r}, not a plain numpy.ndarray")
        return multiarray._reconstruct(numpy.ndarray, *args)

    def _scalar(self, dtype, *args):
        return multiarray.scalar(self._numeric(dtype, "numpy scalar"), *args)

    def _frombuffer(self, buffer, dtype, *args):
        return numeric._frombuffer(buffer, self._numeric(dtype, "numpy._frombuffer"), *args)

    def load_build(self):
        """BUILD, i.e. `obj.__setstate__(state)`: an array's state must carry a numeric dtype (checked before it
        is set), and a dtype must stay numeric."""
        state, obj = self.stack[-1], self.stack[-2]
        if isinstance(obj, numpy.ndarray):
            # (version, shape, dtype, is_fortran, data), or without the version
            self._numeric(state[-3] if isinstance(state, tuple) and len(state) in (4, 5) else None, "numpy array")
        pickle._Unpickler.load_build(self)
        if isinstance(obj, numpy.dtype):
            self._numeric(obj, "numpy.dtype")

    dispatch[pickle.BUILD[0]] = load_build
