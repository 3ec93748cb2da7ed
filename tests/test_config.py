"""Config: defaults <- yaml <- command line, and errors that name the key and where it came from."""
import pytest

from vidkd.config import load_config
from vidkd.errors import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_precedence_defaults_yaml_command_line(tmp_path):
    path = write(tmp_path, "a.yaml", "SEED: 3\nDATA:\n  NUM_FRAMES: 8\n  SAMPLING_RATE: 2\n")
    cfg = load_config(path, ["DATA.NUM_FRAMES", "4"])
    assert (cfg.SEED, cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, cfg.DATA.DECODER) == (3, 4, 2, "decord")
    assert cfg.is_frozen()


def test_base_inheritance(tmp_path):
    write(tmp_path, "base.yaml", "DATA:\n  NUM_FRAMES: 8\n  DECODER: pyav\n")
    child = write(tmp_path, "child.yaml", "_BASE_: base.yaml\nDATA:\n  NUM_FRAMES: 32\n")
    cfg = load_config(child)
    assert (cfg.DATA.NUM_FRAMES, cfg.DATA.DECODER) == (32, "pyav")


def test_int_accepted_for_float_and_list_for_list(tmp_path):
    cfg = load_config(None, ["DATA.TARGET_FPS", "30", "DATA.MEAN", "[0.5, 0.5, 0.5]"])
    assert cfg.DATA.TARGET_FPS == 30.0 and isinstance(cfg.DATA.TARGET_FPS, float)
    assert list(cfg.DATA.MEAN) == [0.5, 0.5, 0.5]


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "bad.yaml", "SEED: 1\nDATA:\n  NUM_FRAMES: 8\n  DECODR: pyav\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: unknown config key 'DATA\.DECODR' \(did you mean DECODER"):
        load_config(path)


def test_wrong_type_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "DATA:\n  FLIP: yes please\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: config key 'DATA\.FLIP' expects bool"):
        load_config(path)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["DATA.NUM_FRAMES", "many"], "command line: config key 'DATA.NUM_FRAMES' expects int"),
        (["DATA.SAMPLING", "sparse"], "command line: config key 'DATA.SAMPLING' must be one of"),
        (["TEST.NUM_CROPS", "2"], "must be one of \\[1, 3\\]"),
        (["NOPE.KEY", "1"], "command line: unknown config key 'NOPE.KEY'"),
        (["DATA", "1"], "is a group of keys"),
        (["DATA.NUM_FRAMES"], "KEY VALUE pairs"),
        (["DATA.MEAN", "[a, b, c]"], "DATA.MEAN' expects float"),
        (["DATA.TRAIN_PER_CLASS", "-1"], "command line: config key 'DATA.TRAIN_PER_CLASS' must be >= 0, got -1"),
    ],
)
def test_bad_command_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(write(tmp_path, "broken.yaml", "DATA: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    loop = write(tmp_path, "loop.yaml", "_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(loop)


def test_choice_error_names_the_file(tmp_path):
    path = write(tmp_path, "c.yaml", "DATA:\n  DECODER: opencv\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: config key 'DATA\.DECODER' must be one of"):
        load_config(path)


def test_every_default_key_has_a_comment():
    import inspect

    from vidkd.config import defaults

    lines = inspect.getsource(defaults).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("_C.") and "CfgNode()" not in line:
            assert lines[i - 1].lstrip().startswith("#") or lines[i - 1].startswith("_C."), line


def shipped_configs():
    """Every config file of configs/ (configs/ablations/ holds lists of variants, not configs)."""
    import glob
    import os

    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    return [p for p in glob.glob(os.path.join(configs, "**", "*.yaml"), recursive=True)
            if os.path.relpath(p, configs).split(os.sep)[0] != "ablations"]


def test_every_shipped_config_loads():

    paths = shipped_configs()
    assert len(paths) >= 4
    for path in paths:
        load_config(path)


def test_every_shipped_config_names_registered_models_and_passes_the_trainers_checks():

    from vidkd.engine.trainer import check_config
    from vidkd.models import REGISTRIES

    for path in shipped_configs():
        cfg = load_config(path)
        unknown = [n for n in (cfg.MODEL.STUDENT, *cfg.MODEL.TEACHERS) if n not in REGISTRIES[cfg.TASK]]
        assert not unknown, f"{path}: {unknown}"
        # what can be checked before anything runs, but the checkpoint files (not shipped)
        cfg.defrost()
        cfg.MODEL.STUDENT_CHECKPOINT, cfg.MODEL.TEACHER_CHECKPOINTS = "", [""] * len(cfg.MODEL.TEACHERS)
        check_config(cfg)
