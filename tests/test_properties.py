"""Property-based tests (hypothesis): random and malformed input to the config loader, the annotation parsers,
the manifest reader and the checkpoint loader gives a valid result or one VidkdError that names the file
(and the line of an annotation file), never another exception and never a hang."""
import contextlib
import io
import json
import math
import os
import pathlib
import re
import signal
import tempfile

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from conftest import launch, records
from test_datasets import E_HEADER, K_HEADER, make_epic, make_hmdb

from vidkd.config import BASE_KEY, load_config, set_dotted, value_at
from vidkd.config.defaults import RELATIONS, RULES, get_defaults
from vidkd.config.rules import List, OneOf, OutputDir, Range, Text
from vidkd.data.datasets.epic_kitchens import parse_epic100
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.datasets.kinetics import parse_kinetics_csv, parse_path_label_list
from vidkd.data.manifest import Manifest
from vidkd.errors import AnnotationError, CheckpointError, ConfigError, VidkdError
from vidkd.models import build_model
from vidkd.models.checkpoint import DEEPSPEED_STATES, WRAPPER_KEYS, load_checkpoint, read_state_dict

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")


class Hang(BaseException):
    """Not an Exception, so that no `except Exception` in the code under test can swallow it."""


def outcome(fn, *args, seconds=20):
    """`fn(*args)`, or the VidkdError it raised; any other exception, or no answer in `seconds`, fails."""
    def hang(*_):
        raise Hang(f"{fn.__name__} gave no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    except VidkdError as e:
        return e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def folder():
    """A fresh temp dir for each example (pytest's tmp_path is one per test, not per hypothesis example)."""
    with tempfile.TemporaryDirectory() as d:
        yield pathlib.Path(d)


def write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def assert_names_a_line_of(error, files):
    """`error` is an AnnotationError about one of `files` that starts with `file:line:`, its line in the file
    (no line only for a folder)."""
    assert isinstance(error, AnnotationError), error
    assert os.path.abspath(error.path) in {os.path.abspath(f) for f in files}, str(error)
    assert str(error).startswith(f"{error.path}:{error.line}: " if error.line else f"{error.path}: ")
    assert error.line or os.path.isdir(error.path), str(error)
    if error.line:
        with open(error.path, "rb") as f:
            assert 1 <= error.line <= len(re.split(rb"\r\n|\r|\n", f.read())), str(error)


def assert_loadable(manifest, d):
    """What a parser returns, the training loader reads back unchanged; an empty split (no error of the annotation
    files: every listed video may be missing) it refuses by name."""
    path = str(d / "out" / "m.json")
    manifest.save(path)
    if manifest.samples:
        assert Manifest.load(path) == manifest
    else:
        error = outcome(Manifest.load, path)
        assert isinstance(error, AnnotationError) and str(error) == f"{path}: no samples: the split is empty"


# config ------------------------------------------------------------------------------------------------


def _leaves(node, prefix=""):
    for key, value in node.items():
        yield from _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]


LEAVES = sorted(_leaves(get_defaults()))
GROUPS = sorted(k for k, v in get_defaults().items() if isinstance(v, dict))
# Values PyYAML composes but cannot construct, or builds oddly: tags, aliases, deep nesting, huge numbers.
NASTY = ["!!float x", "!!int 0x", "!!timestamp x", "!!binary '%%'", "!!set {a, b}", "!!omap [a]", "!foo 1",
         "!!python/object:os.system x", "&a [*a]", "&a {NUM_FRAMES: *a}", "*undefined", "[" * 600, "{a: " * 300,
         "- " * 300 + "1", ".nan", "-.inf", "1" * 5000, "0x" + "f" * 400, "'unclosed", "[1, [2, [3]]]", "{}", "~"]
KEYS = st.one_of(st.sampled_from(LEAVES + GROUPS + [BASE_KEY]), st.text(max_size=10), st.integers(), st.none())
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.just(10**400), st.floats(), st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(sorted({k.split(".")[-1] for k in LEAVES})) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
MAPPING = st.dictionaries(KEYS, VALUES, max_size=6).map(yaml.safe_dump)
NASTY_LINE = st.builds("{}: {}\n".format, st.sampled_from(LEAVES + GROUPS), st.sampled_from(NASTY))
YAML_TEXT = st.one_of(MAPPING, NASTY_LINE, st.lists(MAPPING | NASTY_LINE, max_size=3).map("".join),
                      st.sampled_from(NASTY), st.text(max_size=100))
BASES = st.sampled_from([None, "0.yaml", "1.yaml", "2.yaml", "./0.yaml", "sub/../1.yaml", "missing.yaml", "",
                         ".", "0", "[0.yaml]", "{a: 1}", "\"\\x00\""])
OVERRIDE = st.one_of(st.sampled_from(LEAVES + GROUPS), st.sampled_from(NASTY), st.text(max_size=12))


@st.composite
def config_files(draw):
    """Up to three yaml files 0.yaml, 1.yaml, 2.yaml, each text, bytes or a mapping with a `_BASE_`."""
    files = []
    for _ in range(draw(st.integers(1, 3))):
        base = draw(BASES)
        text = draw(YAML_TEXT | st.binary(max_size=100))
        if base is not None and isinstance(text, str):
            text = f"{BASE_KEY}: {base}\n{text}"
        files.append(text)
    return files


@FUZZ
@given(config_files(), st.lists(OVERRIDE, max_size=6))
@example([b"\xff\xfe"], [])
@example(["!!set {a, b}\n"], [])
@example(["SEED: !!timestamp x\n"], ["SEED", "!!float x"])
@example([f"{BASE_KEY}: ./0.yaml\n"], [])
@example([f"{BASE_KEY}: 5\n"], [])
@example([f'{BASE_KEY}: "\\x00"\n'], [])
@example(["DATA: &a {NUM_FRAMES: *a}\n"], [])
@example(["SOLVER:\n  BASE_LR: " + "9" * 400 + "\n"], ["DATA.TARGET_FPS", ".nan"])
def test_config_loader_refuses_bad_yaml_and_overrides_with_one_error(texts, overrides):
    with folder() as d:
        (d / "sub").mkdir()
        for i, text in enumerate(texts):
            write_bytes(d / f"{i}.yaml", text if isinstance(text, bytes) else text.encode())
        result = outcome(load_config, str(d / "0.yaml"), overrides)
    if isinstance(result, VidkdError):
        assert isinstance(result, ConfigError)
        assert str(result).startswith((str(d), "command line: ")), str(result)
    else:
        assert result.is_frozen()


@FUZZ
@given(st.lists(st.sampled_from(LEAVES + GROUPS) | OVERRIDE, max_size=4),
       st.lists(VALUES.map(yaml.safe_dump) | OVERRIDE, max_size=4))
@example(["SEED.X"], ["1"])
@example(["SEED"], ["[" * 3000])
def test_config_overrides_refused_with_the_key(keys, values):
    overrides = [x for pair in zip(keys, values) for x in pair] + keys[len(values):]
    result = outcome(load_config, None, overrides)
    if isinstance(result, VidkdError):
        assert isinstance(result, ConfigError) and str(result).startswith("command line: "), str(result)
        assert len(overrides) % 2 or any(repr(k) in str(result) for k in overrides[0::2]), str(result)


def test_every_key_has_a_rule():
    """A key added to defaults.py without its rule in defaults.RULES fails here."""
    assert sorted(RULES) == LEAVES
    assert {k for relation in RELATIONS for k in relation.keys} <= set(LEAVES)


def rule_values(rule, default):
    """Values inside, at and past the bounds of the rule `rule` of a key whose default is `default`."""
    if isinstance(rule, Range):
        edges = [rule.low, rule.low - 1, -1, 0, 1, 2**76] + ([] if rule.high is None else [rule.high, rule.high + 1])
        if isinstance(default, float):
            return st.sampled_from([float(e) for e in edges] + [1e-9, math.nan, math.inf]) | st.floats()
        return st.sampled_from(edges) | st.integers(rule.low - 3, (rule.high or 100) + 3)
    if isinstance(rule, OneOf):
        return st.sampled_from([*rule.choices, "other", -1])
    if isinstance(rule, List):
        return st.lists(rule_values(rule.each, default[0] if default else None), max_size=4)  # [] (FACE.*)
    if isinstance(rule, (Text, OutputDir)):
        return st.sampled_from(["", " ", "a\0b", "out/run", __file__, f"{__file__}/run"]) | st.text(max_size=6)
    return st.booleans()


@st.composite
def rule_draws(draw):
    """{dotted key: value} for one to four keys, each value drawn across its rule's range."""
    keys = draw(st.lists(st.sampled_from(sorted(RULES)), min_size=1, max_size=4, unique=True))
    return {k: draw(rule_values(RULES[k], value_at(get_defaults(), k))) for k in keys}


# The values the study of issue 15 found unchecked, by an oracle of their own (not the rule table).
ABSURD = {
    "TRAIN.BATCH_SIZE": lambda v: not v >= 1, "TEST.BATCH_SIZE": lambda v: not v >= 1,
    "DATA.NUM_FRAMES": lambda v: not 1 <= v <= 512, "DATA.TRAIN_CROP_SIZE": lambda v: not 1 <= v <= 1024,
    "DATA.TEST_CROP_SIZE": lambda v: not 1 <= v <= 1024, "TRAIN.GRAD_ACCUM_STEPS": lambda v: not v >= 1,
    "TRAIN.EVAL_PERIOD": lambda v: not v >= 1, "TRAIN.CHECKPOINT_PERIOD": lambda v: not v >= 1,
    "DATA.TRAIN_CROP_SCALE": lambda v: len(v) != 2 or not 0 < v[0] <= v[1] <= 1,
    "DATA.MEAN": lambda v: len(v) != 3, "DATA.STD": lambda v: len(v) != 3 or not min(v) > 0,
    "DATA.NUM_WORKERS": lambda v: not v >= 0, "DATA.PREFETCH_FACTOR": lambda v: not v >= 1,
    "SEED": lambda v: not 0 <= v < 2**32, "DISTILL.SDD_DIM": lambda v: not v >= 1,
    "DISTILL.CACHE_VIEWS": lambda v: not 1 <= v <= 1024, "TRAIN.EPOCHS": lambda v: not v >= 1,
    "DATA.SAMPLING_RATE": lambda v: not v >= 1, "DISTILL.TEMPERATURE": lambda v: not v > 0,
    "TEST.NUM_CLIPS": lambda v: not v >= 1, "MODEL.NUM_CLASSES": lambda v: not v >= 0,
    "DATA.MAX_FAIL_FRACTION": lambda v: not 0 <= v <= 1, "OUTPUT_DIR": lambda v: v.startswith(__file__),
}


def yaml_lines(text):
    """{dotted key: line} of a yaml mapping of keys and groups of keys."""
    lines = {}
    for key, value in yaml.compose(text).value:
        if isinstance(value, yaml.MappingNode):
            lines.update({f"{key.value}.{k.value}": k.start_mark.line + 1 for k, _ in value.value})
        else:
            lines[key.value] = key.start_mark.line + 1
    return lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_draws())
@example({"TRAIN.BATCH_SIZE": 64, "DATA.NUM_FRAMES": 256, "DATA.TRAIN_CROP_SIZE": 1024})
@example({"SOLVER.MIN_LR": 0.5, "SOLVER.BASE_LR": 0.1, "DATA.STD": [0.2, 0.2, 0.0]})
def test_values_across_the_rules_pass_or_are_refused_naming_the_key_and_its_line(values):
    """Each drawn config either loads, keeping none of the values the study found unchecked, or is refused by
    ConfigError at `file:line: config key 'KEY'`, KEY one of the drawn keys and line the one that set it."""
    data = {}
    for dotted, value in values.items():
        set_dotted(data, dotted, value)
    text = yaml.safe_dump(data)
    with folder() as d:
        path = write_bytes(d / "c.yaml", text.encode())
        result = outcome(load_config, path, [])
    if isinstance(result, VidkdError):
        found = re.match(rf"{re.escape(path)}:(\d+): config key '([A-Z_.]+)'", str(result))
        assert isinstance(result, ConfigError) and found and found[2] in values, str(result)
        assert yaml_lines(text)[found[2]] == int(found[1]), str(result)
    else:
        assert not [k for k in values if k in ABSURD and ABSURD[k](value_at(result, k))], values


# Training runs: a drawn config and manifest trains a step or is refused before anything runs.
# Each key's values lie inside, at and past its rule's bounds, small enough that a run takes seconds.
TRAIN_DRAWS = {
    "TRAIN.BATCH_SIZE": [-1, 0, 1, 3, 16, 17], "TEST.BATCH_SIZE": [-1, 0, 3, 100], "TRAIN.EPOCHS": [-1, 0, 1],
    "DATA.NUM_FRAMES": [-1, 0, 1, 8, 10**6], "DATA.TRAIN_CROP_SIZE": [-5, 0, 1, 48, 10**5],
    "DATA.TEST_CROP_SIZE": [0, 1, 48], "DATA.SAMPLING_RATE": [-1, 0, 3, 1000],
    "DATA.TRAIN_CROP_SCALE": [[], [0.5], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0], [0.5, 1.5], [math.nan, 1.0]],
    "DATA.MEAN": [[0.5], [], [0.4, 0.4, 0.4], [math.nan, 0.0, 0.0]],
    "DATA.STD": [[0.0, 1.0, 1.0], [1e-9, 1.0, 1.0], [0.2, 0.2, 0.2], [-1.0, 1.0, 1.0], [math.inf, 1.0, 1.0]],
    "DATA.NUM_WORKERS": [-1, 0, 1], "DATA.PREFETCH_FACTOR": [0, 1], "DATA.MAX_FAIL_FRACTION": [-0.1, 0.0, 1.5],
    "SEED": [-1, 7, 2**32, 2**76], "TRAIN.GRAD_ACCUM_STEPS": [0, 2, 5, 17], "TRAIN.EVAL_PERIOD": [0, 2],
    "TRAIN.CHECKPOINT_PERIOD": [0, 2], "TEST.NUM_CLIPS": [-1, 0, 2], "MODEL.NUM_CLASSES": [-1, 8, 9],
    "SOLVER.BASE_LR": [-1.0, 0.0, 1e30, math.nan], "DEEPSPEED.PRECISION": ["bf16", "fp16", "fp64"],
    "DISTILL.METHOD": ["ce", "kd", "dkd", "fitnet", "rkd", "ofa", "dual_teacher"],
    "DISTILL.TEMPERATURE": [-1.0, 0.0, 1e-9, math.inf, math.nan], "DISTILL.SDD_DIM": [-1, 0, 8],
    "DISTILL.CACHE": ["auto", "require"], "DISTILL.CACHE_VIEWS": [0, 2, 10**9],
}
# One change to a manifest: (split, what): an empty split, a repeated id, a frame range, an fps, a label.
MANIFEST_EDITS = [None, ("train", "empty"), ("test", "empty"), ("train", "repeat"), ("train", "start_frame", 9),
                  ("train", "start_frame", -1), ("train", "start_frame", 10**6), ("test", "fps", -1.0),
                  ("test", "fps", math.nan), ("train", "label", 8), ("test", "names", "a")]
TINY = {"DATA.NUM_FRAMES": 2, "DATA.TRAIN_CROP_SIZE": 32, "DATA.TEST_SHORT_SIDE": 32, "DATA.TEST_CROP_SIZE": 32,
        "DATA.NUM_WORKERS": 0, "TRAIN.BATCH_SIZE": 4, "TRAIN.EPOCHS": 1, "TEST.NUM_CLIPS": 1, "TEST.NUM_CROPS": 1,
        "MODEL.STUDENT": "c3d_tiny", "MODEL.TEACHERS": ["c3d_tiny", "c3d_tiny"], "DEEPSPEED.PRECISION": "fp32"}


@st.composite
def training_draws(draw):
    """(config {dotted key: value} over TINY's tiny run, drawn keys, a MANIFEST_EDITS entry)."""
    keys = draw(st.lists(st.sampled_from(sorted(TRAIN_DRAWS)), min_size=0, max_size=3, unique=True))
    drawn = {k: draw(st.sampled_from(TRAIN_DRAWS[k])) for k in keys}
    return {**TINY, **drawn}, set(drawn), draw(st.sampled_from(MANIFEST_EDITS))


def edit_manifests(source, target, edit):
    """Copy the manifests of `source` to `target`, `edit` applied (see MANIFEST_EDITS)."""
    os.makedirs(target)
    for split in ("train", "test"):
        with open(os.path.join(source, f"{split}.json")) as f:
            m = json.load(f)
        if edit and edit[0] == split:
            what, sample = edit[1], m["samples"][1]
            if what == "empty":
                m["samples"] = []
            elif what == "repeat":
                sample["id"] = m["samples"][0]["id"]
            elif what == "label":
                sample["targets"]["label"] = edit[2]
            elif what == "names":
                m["label_sets"]["label"][0] = edit[2]
            else:
                sample[what] = edit[2]
        with open(os.path.join(target, f"{split}.json"), "w") as f:
            json.dump(m, f)


def edited_path(manifests, edit):
    """The video of the sample that `edit` changed (the second of its split)."""
    m = Manifest.load(str(manifests / f"{edit[0]}.json"))
    return m.abspath(m.samples[1])


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(training_draws(), min_size=8, max_size=8))
@example([({**TINY, "DISTILL.METHOD": "kd", "DISTILL.TEMPERATURE": 1e-9}, {"DISTILL.TEMPERATURE"}, None),
          ({**TINY, "DATA.STD": [1e-9, 1.0, 1.0]}, {"DATA.STD"}, None),
          (TINY, set(), ("train", "start_frame", 10**6)), (TINY, set(), ("test", "names", "a")),
          ({**TINY, "TRAIN.BATCH_SIZE": 17}, {"TRAIN.BATCH_SIZE"}, None),
          ({**TINY, "SOLVER.BASE_LR": 1e30}, {"SOLVER.BASE_LR"}, None),
          ({**TINY, "DATA.TRAIN_CROP_SIZE": 1}, {"DATA.TRAIN_CROP_SIZE"}, None),  # found by a random draw
          ({**TINY, "DATA.TEST_CROP_SIZE": 1}, {"DATA.TEST_CROP_SIZE"}, None)])
def test_drawn_configs_and_manifests_train_a_step_or_are_refused_at_load(dataset, draws):
    """Every draw, run by tools/train_net.py's main (several in one process), either trains (an epoch of finite
    mean loss over the steps not skipped, and a test top-1) or stops with one VidkdError naming a drawn key or the
    edited manifest before any epoch ends (at load; a start past a video's end, known once decoded, at the end of
    the first epoch, naming the video); never a traceback."""
    with folder() as d:
        runs = []
        for i, (values, _, edit) in enumerate(draws):
            edit_manifests(str(dataset / "manifests"), str(d / f"m{i}"), edit)
            data = {"OUTPUT_DIR": str(d / f"run{i}"), "DATA": {"MANIFEST_DIR": str(d / f"m{i}")}}
            for dotted, value in values.items():
                set_dotted(data, dotted, value)
            write_bytes(d / f"c{i}.yaml", yaml.safe_dump(data).encode())
            runs.append(["train_net", "--config", str(d / f"c{i}.yaml"), "--resume", "none"])
        (d / "runs.json").write_text(json.dumps(runs))
        proc = launch(["tools/run_many.py", str(d / "runs.json"), "--outcomes", str(d / "out.json")])
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((d / "out.json").read_text())
        for i, ((values, drawn, edit), result) in enumerate(zip(draws, results)):
            where = f"draw {i}: {values} {edit}: {result}"
            assert "traceback" not in result, where
            if "error" in result:
                named = "config key" in result["message"] and [k for k in drawn if k in result["message"]]
                names_manifest = edit and re.search(rf"m{i}/{edit[0]}\.json", result["message"])
                past_the_end = (edit and edit[1:] == ("start_frame", 10**6) and result["error"] == "DataError"
                                and f"{edited_path(d / f'm{i}', edit)}: cannot decode" in result["message"])
                assert named or names_manifest or past_the_end, where  # a start past the end shows at decoding
                run = d / f"run{i}"
                assert not (run / "metrics.jsonl").exists() or not records(str(run)), where  # no epoch trained
            else:
                history = records(str(d / f"run{i}"))
                assert history and all(math.isfinite(r["loss/total"]) for r in history), where
                assert 0 <= history[-1]["test/top1"] <= 100, where


# annotation files --------------------------------------------------------------------------------------

NUMBERS = ["0", "1", "2", "-1", "-5", "3", "10", "1e3", "0.5", "nan", "inf", "1e999", "9" * 30, "9" * 5000,
           "0x10", "1_0", "", " "]
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])
JUNK = st.one_of(st.binary(max_size=200), st.just(b""), st.just(b"\xef\xbb\xbf"),
                 st.builds(lambda text, junk: text.encode() + junk, st.text(max_size=60), st.binary(min_size=1)))


def lines(*parts):
    """Text files whose lines join random picks of `parts` (strategies) with spaces, random line ends."""
    line = st.lists(st.one_of(*parts), max_size=4).map(" ".join)
    return st.builds(lambda ls, end: end.join(ls).encode(), st.lists(line, max_size=8), LINE_ENDS)


def csv_rows(fields, header):
    """A CSV text: `header` (or a random one), then rows of random fields (quoted, unquoted, of any count)."""
    field = st.one_of(fields, st.text(max_size=8), st.sampled_from(['"a,b"', '"open', 'x"y', '""']))
    rows = st.lists(st.lists(field, max_size=8).map(",".join), max_size=6)
    return st.builds(lambda h, rs, end: (h.rstrip("\n") + end + end.join(rs)).encode(),
                     header | st.text(max_size=40), rows, LINE_ENDS)


@FUZZ
@given(st.one_of(lines(st.sampled_from(["w1.avi", "w2.avi", "w4.avi", "x y.avi"]), st.sampled_from(NUMBERS),
                       st.text(max_size=6)), JUNK),
       st.sampled_from(["wave", "jump", "brush_hair"]), st.booleans())
@example(b"w1.avi 1\n\x80\n", "wave", False)
def test_hmdb51_split_files(content, cls, without_videos):
    with folder() as d:
        videos, splits = make_hmdb(d)
        write_bytes(splits / f"{cls}_test_split1.txt", content)
        if without_videos:
            videos.rename(d / "elsewhere")
        result = outcome(parse_hmdb51, videos, splits, 1)
        if isinstance(result, VidkdError):
            assert_names_a_line_of(result, [*splits.iterdir(), splits])
        else:
            for manifest in result[0].values():
                assert_loadable(manifest, d)


K_FIELDS = st.sampled_from(["zumba", "abseiling", "air drumming", "zz1", "train", "val"] + NUMBERS)


@FUZZ
@given(csv_rows(K_FIELDS, st.just(K_HEADER)) | JUNK, st.sampled_from([None, ["abseiling", "zumba"], []]))
def test_kinetics_csv(content, classes):
    with folder() as d:
        csv_path = write_bytes(d / "k.csv", content)
        write_bytes(d / "videos" / "zz1_000000_000010.mp4", b"")
        result = outcome(parse_kinetics_csv, csv_path, str(d / "videos"), classes)
        if isinstance(result, VidkdError):
            assert_names_a_line_of(result, [csv_path])
        else:
            assert_loadable(result[0], d)


@FUZZ
@given(lines(st.sampled_from(["a.mp4", "b/c d.mp4", "/abs.mp4", "zumba", "air_drumming"]),
             st.sampled_from(NUMBERS), st.text(max_size=6)) | JUNK)
def test_kinetics_path_label_list(content):
    with folder() as d:
        list_path = write_bytes(d / "list.txt", content)
        result = outcome(parse_path_label_list, list_path, str(d), ["abseiling", "air drumming", "zumba"])
        if isinstance(result, VidkdError):
            assert_names_a_line_of(result, [list_path])
        else:
            assert_loadable(result, d)


E_FIELDS = st.sampled_from(["P01_01", "P01", "P02_03", "P01_01_0", "open", "tap", "50.0", "10.0", "1920x1080",
                            "id", "key"] + NUMBERS)
E_HEADERS = {"EPIC_100_train.csv": E_HEADER, "EPIC_100_verb_classes.csv": "id,key,instances,category",
             "EPIC_100_noun_classes.csv": "id,key,instances,category",
             "EPIC_100_video_info.csv": "video_id,duration,fps,resolution"}


@FUZZ
@given(st.sampled_from(sorted(E_HEADERS)).flatmap(
    lambda name: st.tuples(st.just(name), csv_rows(E_FIELDS, st.just(E_HEADERS[name])) | JUNK)),
    st.booleans())
def test_epic100_annotations(bad, frames):
    name, content = bad
    with folder() as d:
        ann = make_epic(d)
        write_bytes(ann / name, content)
        result = outcome(parse_epic100, ann, d, "train", frames)
        if isinstance(result, VidkdError):
            assert_names_a_line_of(result, [ann / n for n in E_HEADERS])
        else:
            assert_loadable(result[0], d)


def test_missing_annotation_files_are_named(tmp_path):
    for error in [outcome(parse_hmdb51, tmp_path / "v", tmp_path / "s", 1),
                  outcome(parse_kinetics_csv, tmp_path / "k.csv", tmp_path),
                  outcome(parse_path_label_list, tmp_path / "l.txt", tmp_path, ["a"]),
                  outcome(parse_epic100, tmp_path, tmp_path, "train"),
                  outcome(Manifest.load, tmp_path / "m.json")]:
        assert isinstance(error, AnnotationError) and str(error).startswith(str(tmp_path)), error


# manifests ---------------------------------------------------------------------------------------------

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
HEADS = st.sampled_from(["label", "verb", "noun"])


def mostly(valid):
    return st.one_of(valid, valid, valid, JSON)


FRAME = st.integers(-2, 6) | st.integers()
SAMPLE = st.fixed_dictionaries(
    {"id": mostly(st.sampled_from(["a", "b", "c"]) | st.text(max_size=4)), "path": mostly(st.text(max_size=4)),
     "targets": mostly(st.dictionaries(HEADS, st.integers(-1, 3) | JSON, max_size=2))},
    optional={"start_frame": mostly(FRAME), "stop_frame": mostly(FRAME),
              "fps": mostly(st.floats(0, 60) | st.floats()), "frames": mostly(st.booleans()), "width": JSON})
MANIFEST = st.fixed_dictionaries(
    {"dataset": mostly(st.text(max_size=4)), "split": mostly(st.text(max_size=4)), "root": mostly(st.just("/r")),
     "label_sets": mostly(st.dictionaries(HEADS, st.lists(st.text(max_size=3), max_size=3), max_size=2)),
     "samples": mostly(st.lists(mostly(SAMPLE), max_size=3))},
    optional={"frame_template": mostly(st.just("f_{:05d}.jpg")), "version": JSON})


@FUZZ
@given(MANIFEST.map(lambda m: json.dumps(m).encode()) | JSON.map(lambda j: json.dumps(j).encode()) | JUNK
       | st.just(b"[" * 100000))
@example(b'{"dataset": "", "split": "", "root": "/r", "label_sets": {}, "samples": []}')
@example(b'{"dataset": "", "split": "", "root": "/r", "label_sets": {"label": ["a"]}, '
         b'"samples": [{"id": "x", "path": 1, "targets": []}]}')
@example(b"[]")
@example(b"\x80")
def test_manifest_reader(content):
    with folder() as d:
        path = write_bytes(d / "m.json", content)
        result = outcome(Manifest.load, path)
    if isinstance(result, VidkdError):
        assert isinstance(result, AnnotationError) and str(result).startswith(f"{path}:"), str(result)
        if re.search(r"need 0 <= start_frame|must be a finite rate|ids must be unique", str(result)):  # names it
            assert re.match(rf"{re.escape(path)}: sample \d+", str(result)), str(result)
    else:  # what the loader then does with it works
        assert result.samples and len({r.id for r in result.samples}) == len(result.samples)
        for r in result.samples:
            assert all(type(y) is int for y in r.targets.values())
            assert 0 <= r.start_frame and (r.stop_frame == -1 or r.start_frame <= r.stop_frame)
            assert r.fps == 0 or 0 < r.fps < math.inf
        result.per_class(1, seed=0)


# checkpoints -------------------------------------------------------------------------------------------

MODEL = build_model("c3d_tiny", 8)
STATE = MODEL.state_dict()
VIT = build_model("videomae_vit_ti", 5, 4, 32, depth=2, learned_pos=True)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.bool,
          torch.complex64]
SHAPES = st.sampled_from(sorted({tuple(v.shape) for v in STATE.values()})) | st.lists(st.integers(0, 3), max_size=4)
TENSORS = st.builds(lambda shape, dtype, sparse: torch.zeros(tuple(shape), dtype=dtype).to_sparse() if sparse
                    else torch.zeros(tuple(shape), dtype=dtype), SHAPES, st.sampled_from(DTYPES), st.booleans())
PLAIN = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6), st.binary(max_size=6))
CHECKPOINT_KEYS = st.sampled_from(sorted(STATE) + list(WRAPPER_KEYS) + ["module.head.weight", "net.head.bias"])
STRUCTURES = st.recursive(PLAIN | TENSORS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(CHECKPOINT_KEYS | st.text(max_size=5) | st.integers(), inner, max_size=4)), max_leaves=10)


def saved(obj, d, name="c.pt"):
    path = str(d / name)
    torch.save(obj, path)
    return path


def assert_checkpoint_outcome(result, path):
    """A state dict or load report, or a CheckpointError naming the file."""
    if isinstance(result, VidkdError):
        assert isinstance(result, CheckpointError) and str(path) in str(result), str(result)
    else:
        assert isinstance(result, dict)


@FUZZ
@given(st.dictionaries(CHECKPOINT_KEYS | st.text(max_size=5) | st.integers(), STRUCTURES, max_size=4) | STRUCTURES,
       st.booleans())
@example({0: torch.zeros(1)}, False)
def test_checkpoint_of_any_structure(obj, partial):
    with folder() as d:
        path = saved(obj, d)
        assert_checkpoint_outcome(outcome(load_checkpoint, MODEL, path, partial), path)


@st.composite
def edited_state_dicts(draw):
    """The model's state dict with some tensors replaced, keys dropped or added, in wrappers and prefixes."""
    state = dict(STATE)
    for key in draw(st.lists(st.sampled_from(["head.weight", "head.bias"]) | st.sampled_from(sorted(STATE)),
                             max_size=3)):
        state[key] = draw(TENSORS | PLAIN)
    for key in draw(st.lists(st.sampled_from(sorted(STATE)), max_size=2)):
        state.pop(key, None)
    state.update(draw(st.dictionaries(CHECKPOINT_KEYS | st.text(max_size=5), TENSORS | PLAIN, max_size=2)))
    prefix = draw(st.sampled_from(["", "module.", "net.", "_orig_mod.module."]))
    state = {f"{prefix}{k}": v for k, v in state.items()}
    for wrapper in draw(st.lists(st.sampled_from(WRAPPER_KEYS), max_size=2)):
        state = {wrapper: state, "epoch": 3}
    return state


@FUZZ
@given(edited_state_dicts(), st.booleans())
@example({**STATE, "head.weight": torch.tensor(0.0)}, False)
@example({**STATE, "head.weight": STATE["head.weight"].to_sparse()}, False)
def test_checkpoint_with_wrong_tensors(state, partial):
    with folder() as d:
        path = saved(state, d)
        result = outcome(load_checkpoint, MODEL, path, partial)
    assert_checkpoint_outcome(result, path)


@FUZZ
@given(TENSORS | st.builds(torch.zeros, st.just(1), st.integers(0, 20), st.sampled_from([7, 192])))
@example(torch.zeros(3))
@example(torch.zeros(1, 2, 0))
@example(torch.zeros(1, 16, 192, dtype=torch.int64))
def test_vit_position_table(table):
    with folder() as d:
        path = saved({**VIT.state_dict(), "pos_embed": table}, d)
        assert_checkpoint_outcome(outcome(load_checkpoint, VIT, path), path)


def _serialized(legacy):
    buffer = io.BytesIO()
    torch.save(STATE, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


SERIALIZED = {legacy: _serialized(legacy) for legacy in (False, True)}


@FUZZ
@given(st.booleans(), st.data())
def test_truncated_or_corrupt_checkpoint_file(legacy, data):
    good = SERIALIZED[legacy]
    cut = data.draw(st.integers(0, len(good)))
    flips = data.draw(st.dictionaries(st.integers(0, len(good) - 1), st.integers(0, 255), max_size=4))
    content = bytearray(good[:cut] if data.draw(st.booleans()) else good)
    for at, byte in flips.items():
        if at < len(content):
            content[at] = byte
    with folder() as d:
        path = write_bytes(d / "c.pt", bytes(content))
        assert_checkpoint_outcome(outcome(read_state_dict, path), path)


@FUZZ
@given(JUNK)
@example(b"")
def test_checkpoint_of_random_bytes(content):
    with folder() as d:
        path = write_bytes(d / "c.pt", content)
        assert_checkpoint_outcome(outcome(read_state_dict, path), path)


@FUZZ
@given(st.one_of(st.sampled_from([b"global_step7", b"global_step7\n", b"", b"..", b"../c", b"missing", b"a\x00b",
                                  b"global_step7/" + DEEPSPEED_STATES.encode()]), JUNK, st.none()),
       st.sampled_from(["states", "junk", "folder", "none"]))
@example(b"\xff", "states")
def test_deepspeed_folder_with_a_bad_latest(latest, tag_holds):
    with folder() as d:
        ds = d / "ds"
        (ds / "global_step7").mkdir(parents=True)
        if latest is not None:
            write_bytes(ds / "latest", latest)
        states = ds / "global_step7" / DEEPSPEED_STATES
        if tag_holds == "states":
            torch.save({"module": STATE}, states)
        elif tag_holds == "junk":
            write_bytes(states, b"\x80\x02junk")
        elif tag_holds == "folder":
            states.mkdir()
        assert_checkpoint_outcome(outcome(read_state_dict, str(ds)), ds)


def test_a_dict_that_wraps_itself_does_not_hang(tmp_path):
    loop = {"w": torch.zeros(1)}
    loop["model"] = loop
    assert set(outcome(read_state_dict, saved(loop, tmp_path), seconds=5)) == {"w"}
