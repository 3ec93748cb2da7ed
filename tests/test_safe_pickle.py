"""The restricted pickle reader: plain data and numpy arrays load; anything that could run code is refused
before it runs; a corrupt file gives one clear error naming it."""
import codecs
import os
import pickle
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidkd import safe_pickle
from vidkd.errors import CheckpointError, UnsafePickleError

I3D_LIKE = {"params": {"conv3d_1a_7x7": {"w": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)},
                       "logits": {"b": np.ones(5, np.float32)}},
            "batch_stats": {"conv3d_1a_7x7": {"mean": np.zeros(4, np.float32), "var": np.float32(1.5)}}}


def dumped(tmp_path, obj, protocol=pickle.DEFAULT_PROTOCOL, name="x.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return str(path)


def assert_same(a, b):
    """Equal, and numpy arrays and scalars of the same dtype."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_round_trips(tmp_path, protocol):
    """Protocols 0-2 store Python 3's bytes through `_codecs.encode` and `bytes()`, bytearrays through
    `bytearray(text, "latin-1")`: guards that take those arguments only."""
    data = {"a": [1, 2.5, "x", b"\x00\xff", b"", None, True], "t": (1, (2,)), "s": {1, 2}, "f": frozenset("ab"),
            "c": 1 - 2j, "ba": bytearray(b"xy"), 3: {"nested": [{"deep": -(10**30)}]}}
    assert safe_pickle.load(dumped(tmp_path, data, protocol)) == data


class Call:
    """Pickles as `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("call, name", [(Call(bytes, 10**12), "builtins.bytes called with arguments"),
                                        (Call(bytearray, 10**12), "builtins.bytearray with arguments"),
                                        (Call(codecs.encode, "x", "rot13"), "_codecs.encode with arguments")])
def test_the_bytes_guards_take_only_plain_datas_arguments(tmp_path, call, name):
    with pytest.raises(UnsafePickleError, match=name):  # nothing allocated: refused before the call
        safe_pickle.load(dumped(tmp_path, [call], 2))


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_numpy_arrays_load_only_when_allowed(tmp_path, protocol):
    path = dumped(tmp_path, I3D_LIKE, protocol)
    assert_same(safe_pickle.load(path, allow_numpy=True), I3D_LIKE)
    with pytest.raises(UnsafePickleError, match=r"x\.pkl: refused numpy\._core\.(multiarray\._reconstruct|"
                                                r"numeric\._frombuffer)"):
        safe_pickle.load(path)


class WritesAFile:
    def __init__(self, path, how):
        self.path, self.how = path, how

    def __reduce__(self):
        if self.how == "open":
            return open, (self.path, "w")
        if self.how == "exec":
            return exec, (f"open({self.path!r}, 'w').close()",)
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("how, name", [("open", "io.open"), ("exec", "builtins.exec"), ("system", "posix.system")])
def test_a_pickle_carrying_code_is_refused_before_it_runs(tmp_path, how, name):
    victim = tmp_path / "pwned.txt"
    path = dumped(tmp_path, {"params": {"w": WritesAFile(str(victim), how)}})
    with pytest.raises(UnsafePickleError, match=rf"x\.pkl: refused {name}:") as e:
        safe_pickle.load(path, allow_numpy=True)
    assert e.value.name == name and not victim.exists()


class Subclass(np.ndarray):
    def __setstate__(self, state):
        raise AssertionError("a subclass's code ran")


class ReconstructsADtype:
    """Pickles as numpy's `_reconstruct` called with numpy.dtype in place of ndarray."""

    def __reduce__(self):
        return np.zeros(0).__reduce__()[0], (np.dtype, (0,), b"b")


def test_an_ndarray_subclass_is_refused(tmp_path):
    with pytest.raises(UnsafePickleError, match="refused test_safe_pickle.Subclass"):
        safe_pickle.load(dumped(tmp_path, np.zeros(3).view(Subclass)), allow_numpy=True)
    with pytest.raises(UnsafePickleError, match="refused numpy.matrix"):
        safe_pickle.load(dumped(tmp_path, np.matrix([[1.0]])), allow_numpy=True)
    with pytest.raises(UnsafePickleError, match="_reconstruct of .*, not a plain numpy.ndarray"):
        safe_pickle.load(dumped(tmp_path, ReconstructsADtype()), allow_numpy=True)


class CallsNdarray:
    """numpy.ndarray(shape, dtype, buffer) called by the pickle itself: an array over the pickle's bytes."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        return np.ndarray, ((2,), self.dtype, b"\x41" * 16)


class ScalarOf:
    """numpy's scalar constructor with a dtype: an object scalar would be a pointer made of the pickle's bytes."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        return np.float64(1.0).__reduce__()[0], (self.dtype, b"\x41" * 8)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_only_numeric_arrays_and_only_through_numpys_reconstruction(tmp_path, protocol):
    """An object array or scalar built over attacker bytes crashes the process when touched: refused, naming it."""
    numeric = {"f": np.arange(3.0), "c": np.ones(2, np.complex64), "b": np.zeros(2, bool), "s": np.uint16(7)}
    assert_same(safe_pickle.load(dumped(tmp_path, numeric, protocol), allow_numpy=True), numeric)
    refused = [(CallsNdarray(np.dtype("f8")), "numpy.ndarray called directly"),
               (CallsNdarray(np.dtype("O")), r"numpy.dtype of dtype dtype\('O'\), not a numeric dtype"),
               (np.array([1, "a"], dtype=object), "not a numeric dtype"),
               (np.zeros(2, [("a", "f4"), ("b", "O")]), "not a numeric dtype"),
               (np.zeros(2, "U3"), "not a numeric dtype"),
               (ScalarOf(np.dtype("O")), "not a numeric dtype")]
    for obj, match in refused:
        with pytest.raises(UnsafePickleError, match=match):
            safe_pickle.load(dumped(tmp_path, obj, protocol), allow_numpy=True)


def test_truncated_and_missing_files_give_one_clear_error(tmp_path):
    whole = pickle.dumps(I3D_LIKE)
    for cut in (0, 1, len(whole) // 2, len(whole) - 1):
        (tmp_path / "cut.pkl").write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.pkl: not a readable pickle \(truncated or corrupt"):
            safe_pickle.load(str(tmp_path / "cut.pkl"), allow_numpy=True)
    with pytest.raises(CheckpointError, match="none.pkl: cannot read: No such file"):
        safe_pickle.load(str(tmp_path / "none.pkl"))


def test_a_huge_memo_index_is_not_allocated(tmp_path):
    """The C unpickler would grow its memo array to ~4 GB for this 9-byte pickle."""
    (tmp_path / "memo.pkl").write_bytes(b"\x80\x04N" + b"r" + (2**28).to_bytes(4, "little") + b".")
    assert safe_pickle.load(str(tmp_path / "memo.pkl")) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda head, tail: head + tail, st.sampled_from([b"\x80\x04", b"\x80\x05", b"\x80\x02"]),
                           st.binary(max_size=100)),
                 st.builds(lambda data, cut: data[:cut], st.just(pickle.dumps(I3D_LIKE)), st.integers(0, 800))),
       st.booleans())
def test_random_bytes_give_a_value_or_the_one_error(content, allow_numpy):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.pkl")
        with open(path, "wb") as f:
            f.write(content)
        try:
            safe_pickle.load(path, allow_numpy)
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: "), str(e)



@pytest.mark.parametrize("make", [lambda big: Call(codecs.encode, big, "latin1"), lambda big: Call(set, list(big)),
                                  lambda big: Call(bytearray, big, "latin-1")])
def test_calls_repeated_on_one_remembered_argument_cannot_multiply_the_file(tmp_path, make):
    """A 100 kB argument, remembered once and passed to 300 calls, would build 300 times its size: refused once
    the guards have built 4 items per byte of the file (plus 1 Mi)."""
    big = "x" * 100_000
    shared = make(big).args[0]
    calls = [Call(make(big).fn, shared, *make(big).args[1:]) for _ in range(300)]
    with pytest.raises(UnsafePickleError, match="more data built by calls than the file's size allows"):
        safe_pickle.load(dumped(tmp_path, calls, 2))
    assert safe_pickle.load(dumped(tmp_path, calls[:3], 2))  # a few are plain data


def test_an_empty_bytearray_and_python_2s_bytearray_read(tmp_path):
    assert safe_pickle.load(dumped(tmp_path, [bytearray()], 2)) == [bytearray()]
    # Python 2 pickles bytearray(u"xy", "latin-1"); with Python 2 strings kept as bytes the encoding is b"latin-1"
    with open(tmp_path / "py2.pkl", "wb") as f:
        pickle.dump(Call(bytearray, "xy", b"latin-1"), f, protocol=2)
    assert safe_pickle.load(str(tmp_path / "py2.pkl"), encoding="bytes") == bytearray(b"xy")
