"""Config loading: defaults (defaults.py) <- yaml file(s) <- command-line `KEY VALUE` pairs.

Every value is checked before anything runs: an unknown key, a key given twice in one yaml mapping, a wrong type,
a value its rule in defaults.RULES refuses, or values that break one of defaults.RELATIONS raise ConfigError naming
the key and where it came from (file and line, or the command line).
A yaml may inherit from another with `_BASE_: relative/path.yaml`.
"""
import os
import sys

import yaml
from fvcore.common.config import CfgNode

from vidkd.config.defaults import RELATIONS, RULES, get_defaults
from vidkd.errors import ConfigError

BASE_KEY = "_BASE_"
# What yaml.safe_load raises on bad text: YAMLError, and from its constructors of tagged scalars ValueError
# (`!!float x`) and AttributeError (`!!timestamp x`); RecursionError on deep nesting.
YAML_FAILURES = (yaml.YAMLError, ValueError, AttributeError, RecursionError)


def load_config(path=None, overrides=()):
    """Return the frozen config: defaults, then the yaml at `path` (if any), then `overrides`
    (a flat list `[KEY, VALUE, KEY, VALUE, ...]`, values in yaml syntax)."""
    cfg, origins = get_defaults(), {}
    if path:
        _merge_file(cfg, path, (), origins)
    if len(overrides) % 2:
        raise ConfigError(f"command line: overrides must be KEY VALUE pairs, got an odd count: {list(overrides)}")
    for key, text in zip(overrides[0::2], overrides[1::2]):
        try:
            value = yaml.safe_load(text)
        except YAML_FAILURES:
            value = text
        _set(cfg, key, value, "command line", origins)
    _check_values(cfg, origins)
    cfg.freeze()
    return cfg


def _merge_file(cfg, path, seen, origins):
    if os.path.realpath(path) in seen:
        raise ConfigError(f"{path}: {BASE_KEY} chain loops back to itself")
    node, data = _read_yaml(path)
    if node is None:
        return
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the top level must be a mapping of keys")
    if BASE_KEY in data:
        base = data.pop(BASE_KEY)
        if not isinstance(base, str) or "\0" in base:
            raise ConfigError(f"{path}: {BASE_KEY} must be the path of a yaml file, got {base!r}")
        _merge_file(cfg, os.path.join(os.path.dirname(path), base), seen + (os.path.realpath(path),), origins)
    for key, value, line in _flatten(data, node, cfg):
        _set(cfg, key, value, f"{path}:{line}", origins)


def _read_yaml(path):
    """The node tree (for line numbers) and the data of a yaml file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file ({e})")
    try:
        node, data = yaml.compose(text), yaml.safe_load(text)
    except YAML_FAILURES as e:
        raise ConfigError(f"{path}: not valid yaml: {e}")
    _refuse_repeated_keys(node, path)
    return node, data


def _refuse_repeated_keys(root, path):
    """A ConfigError for a key given twice in one mapping anywhere in the node tree (yaml would keep the last one
    silently). Walked without recursion, each node once (an alias may make a node contain itself)."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or not isinstance(node, yaml.CollectionNode):
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
            continue
        lines = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode):
                if (key.tag, key.value) in lines:
                    raise ConfigError(f"{path}:{line}: key {key.value!r} is given twice in one mapping, on lines "
                                      f"{lines[key.tag, key.value]} and {line} (yaml would keep the last silently)")
                lines[key.tag, key.value] = line
            stack.extend((key, value))


def _flatten(data, node, group, prefix=""):
    """Yield (dotted key, value, 1-based line) for the entries of a yaml mapping, descending only into the
    mappings of config groups (a yaml alias may make a mapping contain itself)."""
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    children = {k.value: v for k, v in node.value}
    for key, value in data.items():
        dotted, child = f"{prefix}{key}", children.get(str(key))
        if isinstance(group.get(key), CfgNode) and isinstance(value, dict) and isinstance(child, yaml.MappingNode):
            yield from _flatten(value, child, group[key], dotted + ".")
        else:
            yield dotted, value, lines.get(str(key), "?")


def _set(cfg, dotted, value, where, origins):
    node, parts = cfg, str(dotted).split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, CfgNode) or part not in node:
            raise ConfigError(f"{where}: unknown config key {dotted!r}" + _did_you_mean(node, part))
        if i < len(parts) - 1:
            node = node[part]
    default = node[parts[-1]]
    if isinstance(default, CfgNode):
        raise ConfigError(f"{where}: {dotted!r} is a group of keys, not a value")
    node[parts[-1]] = _coerce(value, default, dotted, where)
    origins[dotted] = where


def _coerce(value, default, key, where):
    """Accept the default's type; int for float; list for tuple and back. Anything else is an error."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float) and isinstance(value, (int, float)):
        if not abs(value) <= sys.float_info.max:  # NaN, infinity, or an int too large for a float
            raise ConfigError(f"{where}: config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        if default and value:
            value = [_coerce(v, default[0], key, where) for v in value]
        return type(default)(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{where}: config key {key!r} expects {type(default).__name__} (default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _did_you_mean(node, part):
    close = [k for k in node if k.lower().startswith(part.lower()[:3])] if isinstance(node, CfgNode) else []
    return f" (did you mean {', '.join(close)}?)" if close else ""


def value_at(cfg, dotted):
    """`cfg["DATA"]["NUM_FRAMES"]` for "DATA.NUM_FRAMES"."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_dotted(tree, dotted, value):
    """In a nested dict (a yaml config's data), set "GROUP.KEY" (or a top-level "KEY") to `value`."""
    *groups, key = dotted.split(".")
    for group in groups:
        tree = tree.setdefault(group, {})
    tree[key] = value


def _check_values(cfg, origins):
    """Each value against its rule, then the relations between keys (which may count on the rules)."""
    for dotted, rule in RULES.items():
        value = value_at(cfg, dotted)
        if not rule(value):
            raise ConfigError(f"{origins.get(dotted, 'defaults')}: config key {dotted!r} must be {rule}, got {value!r}")
    for keys, holds, text in RELATIONS:
        values = [value_at(cfg, k) for k in keys]
        if not holds(*values):
            key = next(k for k in keys if k in origins)  # the defaults keep every relation: some key was set
            shown = ", ".join(f"{k} = {v!r} ({origins.get(k, 'default')})" for k, v in zip(keys, values))
            raise ConfigError(f"{origins[key]}: config key {key!r}: {text}; got {shown}")
