"""Hostile and careless input, tried on vidkd's tools as a user would: crafted pickles given to every option that
reads a weights file, tampered run folders resumed, damaged teacher caches, absurd configs and bad manifests.

Prints, by group, how many attacks were tried, held and failed, and lists the failures. An attack holds when no
code from a file ran (each payload would create its own marker file) and the tool either stopped with one
VidkdError naming what is wrong (the key, the file or the sample), or, where vidkd repairs the input (a damaged
checkpoint set aside, a damaged cache rebuilt), trained on. Anything else fails: a traceback, a crash, exit 0 on
input that should stop, a run that trains on damaged data.

    python tools/audit_inputs.py [--work DIR]

It runs on the CPU in about a minute on 2 idle cores (tiny models, the synthetic dataset; tools/run_many.py runs
the tools, a process restarted after a crash). Kills during training and cache fills are tried by
tests/test_faults.py and tests/test_teacher_cache.py, which run real SIGKILLs.
"""
import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import yaml

from vidkd.cli import run
from vidkd.config import set_dotted
from vidkd.data.datasets.hmdb51 import parse_hmdb51
from vidkd.data.synthetic import make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"DATA": {"NUM_FRAMES": 2, "TRAIN_CROP_SIZE": 32, "TEST_SHORT_SIDE": 32, "TEST_CROP_SIZE": 32,
                 "NUM_WORKERS": 0},
        "MODEL": {"STUDENT": "c3d_tiny", "TEACHERS": ["c3d_tiny", "c3d_tiny"]},
        "TRAIN": {"BATCH_SIZE": 4, "EPOCHS": 2, "CHECKPOINT_PERIOD": 1},
        "TEST": {"NUM_CLIPS": 1, "NUM_CROPS": 1}, "DISTILL": {"METHOD": "kd"}, "DEEPSPEED": {"PRECISION": "fp32"}}


class Payload:
    """Unpickled, it runs `how` (os.system, exec, eval or subprocess) to create `marker`."""

    def __init__(self, how, marker):
        self.how, self.marker = how, marker

    def __reduce__(self):
        code = f"open({self.marker!r}, 'w').close()"
        return {"system": (os.system, (f"touch {self.marker}",)), "exec": (exec, (code,)),
                "eval": (eval, (code,)), "popen": (subprocess.Popen, (["touch", self.marker],))}[self.how]


class RawArray:
    """Unpickled, it calls numpy.ndarray directly: an object array over bytes of the file (a crash when used)."""

    def __reduce__(self):
        return np.ndarray, ((4,), np.dtype(object), b"\x41" * 32)


def pickles(folder, marker):
    """{name: path} of crafted files, each creating `marker(name)` if anything unpickles it fully."""
    os.makedirs(folder)
    files = {}
    for how in ("system", "exec", "eval", "popen"):
        files[f"pickle, {how}"] = _dump(folder, how, {"model": {"w": Payload(how, marker(f"pickle, {how}"))}})
    name = "pickle, numpy.ndarray over raw bytes"
    files[name] = _dump(folder, "ndarray", {"model": {"w": RawArray()}, "x": Payload("system", marker(name))})
    name = "pickle, object array through numpy's reconstruction"
    files[name] = _dump(folder, "objects", {"model": {"w": np.array([Payload("system", marker(name))], object)}})
    for legacy in (False, True):
        name = f"torch.save ({'legacy' if legacy else 'zip'} format), os.system"
        files[name] = os.path.join(folder, f"torch_{legacy}.pt")
        torch.save({"model": {"w": Payload("system", marker(name))}}, files[name],
                   _use_new_zipfile_serialization=not legacy)
    return files


def _dump(folder, stem, obj):
    path = os.path.join(folder, f"{stem}.pkl")
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


def merged(base, changes):
    """`base` (nested dict) with `changes` {"GROUP.KEY" or "KEY": value} set."""
    out = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        set_dotted(out, dotted, value)
    return out


class Audit:
    def __init__(self, work):
        self.work, self.attacks, self.runs = work, [], []
        self.data = os.path.join(work, "data")
        make_dataset(self.data, videos_per_class=3, height=48, width=64, frames=16, progress=False)
        manifests, _ = parse_hmdb51(os.path.join(self.data, "videos"), os.path.join(self.data, "splits"), 1)
        for split, manifest in manifests.items():
            manifest.save(os.path.join(self.data, "manifests", f"{split}.json"))
        self.video = manifests["test"].abspath(manifests["test"].samples[0])

    def config(self, name, changes=None, text=None):
        """A config file: TINY with `changes`, OUTPUT_DIR its own folder; or the yaml `text` as given."""
        path = os.path.join(self.work, "configs", f"{len(os.listdir(os.path.join(self.work, 'configs')))}.yaml")
        if text is None:
            base = merged(TINY, {"OUTPUT_DIR": os.path.join(self.work, "runs", name),
                                 "DATA.MANIFEST_DIR": os.path.join(self.data, "manifests")})
            text = yaml.safe_dump(merged(base, changes or {}))
        with open(path, "w") as f:
            f.write(text)
        return path

    def add(self, group, name, run, expect):
        """One attack: `run` a tool invocation, `expect` ("refused", pattern) or ("repaired", output folder)."""
        self.attacks.append({"group": group, "name": name, "run": run, "expect": expect,
                             "marker": self.marker(f"{group}: {name}")})

    def marker(self, name):
        return os.path.join(self.work, "markers", re.sub(r"\W+", "_", name))

    def run_all(self, runs):
        """Outcomes of `runs` (tools/run_many.py entries), a new process after each crash."""
        results = []
        while len(results) < len(runs):
            todo, out = os.path.join(self.work, "todo.json"), os.path.join(self.work, "outcomes.json")
            with open(todo, "w") as f:
                json.dump(runs[len(results):], f)
            if os.path.exists(out):
                os.remove(out)
            proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_many.py"), todo, "--outcomes",
                                   out], cwd=self.work, capture_output=True, text=True, check=False)
            if os.path.exists(out):
                with open(out) as f:
                    results += json.load(f)
            if len(results) < len(runs):  # the process died during the next run
                results.append({"crash": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"})
        return results


def held(attack, result):
    """(held, why not)."""
    if os.path.exists(attack["marker"]):
        return False, "code from the file ran"
    if "crash" in result or "traceback" in result:
        return False, (result.get("crash") or result["traceback"].strip().splitlines()[-1])
    kind, detail = attack["expect"][:2]
    if kind == "either" and "error" in result:  # refused, naming the checkpoint folder it refused
        return detail in result["message"], result["message"].splitlines()[0][:200]
    if kind == "refused":
        if "error" not in result:
            return False, "ran to its end"
        return bool(re.search(detail, result["message"])), result["message"].splitlines()[0][:200]
    if "error" in result:  # repaired: the run trains on
        return False, result["message"].splitlines()[0][:200]
    with open(os.path.join(detail, "metrics.jsonl")) as f:
        epochs = [json.loads(line)["epoch"] for line in f]
    if epochs != list(range(1, len(epochs) + 1)) or not epochs:
        return False, f"trained epochs {epochs}"
    if len(attack["expect"]) > 2:  # a rebuilt cache: the rows of the first fill, not of the damaged copy
        root, source = attack["expect"][2:]
        if _shards(root) != _shards(source):
            return False, "trained on a damaged cache"
    return True, ""


def _shards(root):
    """{file name: bytes} of the .npy files of a teacher cache folder."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".npy") and not name.startswith("filled."):  # the targets, not the fill's marks
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[name] = f.read()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="folder for the files it makes (default: a temporary one, removed)")
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="vidkd_audit_")
    for sub in ("configs", "markers", "runs"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    audit = Audit(work)
    print("training the runs the attacks start from ...", flush=True)
    base_config = audit.config("base")
    cache_config = audit.config("cache", {"DISTILL.CACHE": "auto", "DISTILL.CACHE_DIR": os.path.join(work, "cache"),
                                          "TRAIN.EPOCHS": 1})
    setup = audit.run_all([["train_net", "--config", base_config], ["train_net", "--config", cache_config]])
    if any("status" not in r for r in setup):
        sys.exit(f"the runs the attacks start from failed: {setup}")
    add_pickles(audit, base_config)
    add_resume(audit)
    add_cache(audit)
    add_configs(audit)
    add_manifests(audit)
    print(f"{len(audit.attacks)} attacks ...", flush=True)
    results = audit.run_all([a["run"] for a in audit.attacks])
    table, failures = {}, []
    for attack, result in zip(audit.attacks, results):
        ok, why = held(attack, result)
        row = table.setdefault(attack["group"], [0, 0])
        row[0 if ok else 1] += 1
        if not ok:
            failures.append(f"  {attack['group']}: {attack['name']}: {why}")
    print(f"\n{'group':<28}{'tried':>6}{'held':>6}{'failed':>8}")
    for group, (good, bad) in table.items():
        print(f"{group:<28}{good + bad:>6}{good:>6}{bad:>8}")
    total = [sum(r[i] for r in table.values()) for i in (0, 1)]
    print(f"{'all':<28}{sum(total):>6}{total[0]:>6}{total[1]:>8}")
    if failures:
        print("\nfailed:\n" + "\n".join(failures))
    if not args.work:
        shutil.rmtree(work)
    return 1 if failures else 0


OPTIONS = ("test_net --checkpoint", "predict --checkpoint", "export_student --checkpoint", "MODEL.STUDENT_CHECKPOINT",
           "MODEL.TEACHER_CHECKPOINTS", "convert_i3d_deepmind --ckpt")


def add_pickles(audit, config):
    """Every crafted file to every option that reads weights."""
    labels = os.path.join(audit.work, "labels.txt")
    with open(labels, "w") as f:
        f.write("a\nb\n")
    for option in OPTIONS:
        folder = os.path.join(audit.work, "pickles", re.sub(r"\W+", "_", option))
        for name, path in pickles(folder, lambda name: audit.marker(f"crafted pickles: {name} -> {option}")).items():
            out = os.path.join(audit.work, "runs", re.sub(r"\W+", "_", f"{name} {option}"))
            run = {
            "test_net --checkpoint": ["test_net", "--config", config, "--checkpoint", path],
            "predict --checkpoint": ["predict", audit.video, "--checkpoint", path],
            "export_student --checkpoint": ["export_student", "--config", config, "--checkpoint", path,
                                            "--out", out + "_export"],
            "MODEL.STUDENT_CHECKPOINT": ["train_net", "--config", audit.config(
                out + "_s", {"MODEL.STUDENT_CHECKPOINT": path})],
            "MODEL.TEACHER_CHECKPOINTS": ["train_net", "--config", audit.config(
                out + "_t", {"MODEL.TEACHER_CHECKPOINTS": [path, path]})],
            "convert_i3d_deepmind --ckpt": ["convert_i3d_deepmind", "--ckpt", path, "--labels", labels,
                                           "--out", out + ".pt"],
            }[option]
            audit.add("crafted pickles", f"{name} -> {option}", run, ("refused", re.escape(path)))


def tampered(audit, name, damage):
    """A copy of the base run, `damage(checkpoints folder, newest tag)` applied, resumed for one more epoch."""
    out = os.path.join(audit.work, "runs", f"resume_{len(audit.attacks)}")
    shutil.copytree(os.path.join(audit.work, "runs", "base"), out)
    folder = os.path.join(out, "checkpoints")
    newest = sorted(t for t in os.listdir(folder) if t.startswith("epoch_"))[-1]
    damage(folder, newest)
    config = audit.config(out, {"OUTPUT_DIR": out, "TRAIN.EPOCHS": 3})
    return ["train_net", "--config", config], out


def _rewrite_manifest(folder, tag, edit):
    path = os.path.join(folder, tag, "MANIFEST.json")
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _replace_listed(folder, tag, file, payload_path):
    """Put `payload_path` in place of `file` of checkpoint `tag` and rewrite the manifest's size and SHA-256."""
    from vidkd.hashing import sha256_of_files

    target = os.path.join(folder, tag, file)
    shutil.copy(payload_path, target)

    def edit(manifest):
        manifest["files"][file] = {**manifest["files"][file], "size": os.path.getsize(target),
                                   "sha256": sha256_of_files([target])}
    _rewrite_manifest(folder, tag, edit)


def add_resume(audit):
    """Tampered run folders given to --resume auto."""
    def evil(name):
        path = os.path.join(audit.work, "pickles", f"resume_{len(audit.attacks)}.pt")
        torch.save({"module": Payload("system", audit.marker(f"tampered resume: {name}"))}, path)
        return path

    def states_file(folder, tag):
        return sorted(f for f in os.listdir(os.path.join(folder, tag)) if f.endswith("model_states.pt"))[0]

    cases = {
        "model states replaced by a pickle, manifest rewritten to match": lambda f, t: _replace_listed(
            f, t, states_file(f, t), evil("model states replaced by a pickle, manifest rewritten to match")),
        "rank file replaced by a pickle, manifest rewritten to match": lambda f, t: _replace_listed(
            f, t, "rank_000.pt", evil("rank file replaced by a pickle, manifest rewritten to match")),
        "manifest listing no files": lambda f, t: _rewrite_manifest(f, t, lambda m: m.update(files={})),
        "a file the manifest does not list": lambda f, t: _write(os.path.join(f, t, "extra.pt"), ""),
        "a listed file cut short": lambda f, t: os.truncate(os.path.join(f, t, states_file(f, t)), 100),
        "a listed file overwritten with bytes of its size": lambda f, t: _overwrite(os.path.join(f, t,
                                                                                                states_file(f, t))),
        "manifest deleted": lambda f, t: os.remove(os.path.join(f, t, "MANIFEST.json")),
        "manifest not JSON": lambda f, t: _write(os.path.join(f, t, "MANIFEST.json"), "{"),
        "latest naming a missing tag": lambda f, t: _write(os.path.join(f, "latest"), "epoch_0099"),
        "latest naming a path outside": lambda f, t: _write(os.path.join(f, "latest"), "../../x"),
    }
    for name, damage in cases.items():
        run, out = tampered(audit, name, damage)
        audit.add("tampered resume", name, run, ("repaired", out))
        if "pickle" in name:  # refused with the file and what it named, or set aside: either holds if nothing ran
            audit.attacks[-1]["expect"] = ("either", out)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _overwrite(path):
    with open(path, "r+b") as f:
        f.write(np.random.default_rng(0).bytes(os.path.getsize(path)))


def add_cache(audit):
    """Damaged teacher caches, under DISTILL.CACHE auto (rebuilt) and require (refused naming the file)."""
    source = os.path.join(audit.work, "cache")
    cases = {
        "a shard emptied": lambda shard, meta: _write(shard, ""),
        "a shard cut short": lambda shard, meta: os.truncate(shard, os.path.getsize(shard) // 2),
        "plausible values in a shard": _plausible,
        "meta.json deleted": lambda shard, meta: os.remove(meta),
        "meta.json not JSON": lambda shard, meta: _write(meta, "{"),
    }
    for name, damage in cases.items():
        for mode in ("auto", "require"):
            root = os.path.join(audit.work, "caches", f"{len(audit.attacks)}")
            shutil.copytree(source, root)
            (key,) = os.listdir(root)
            with open(os.path.join(root, key, "meta.json")) as f:
                shard = os.path.join(root, key, sorted(json.load(f)["sha256"])[0])  # a shard the targets are read from
            damage(shard, os.path.join(root, key, "meta.json"))
            out = os.path.join(audit.work, "runs", f"cache_{len(audit.attacks)}")
            config = audit.config(out, {"DISTILL.CACHE": mode, "DISTILL.CACHE_DIR": root, "TRAIN.EPOCHS": 1})
            expect = ("repaired", out, root, source) if mode == "auto" else ("refused", re.escape(os.path.join(root, key)))
            audit.add("damaged teacher cache", f"{name} ({mode})", ["train_net", "--config", config], expect)


def _plausible(shard, meta):
    """Rows swapped: every value a real teacher output, in the wrong place."""
    array = np.load(shard, mmap_mode="r+")
    array[[0, 1]] = array[[1, 0]]
    array.flush()


ABSURD = {  # key: values that must be refused naming the key
    "TRAIN.BATCH_SIZE": [0, -1, 17], "TEST.BATCH_SIZE": [0], "DATA.NUM_FRAMES": [0, -4],
    "DATA.TRAIN_CROP_SIZE": [0, -1, 100000], "DATA.TEST_CROP_SIZE": [0], "DATA.TEST_SHORT_SIDE": [0],
    "TRAIN.GRAD_ACCUM_STEPS": [0, 9], "TRAIN.EVAL_PERIOD": [0], "TRAIN.CHECKPOINT_PERIOD": [0],
    "DATA.TRAIN_CROP_SCALE": [[0.9, 0.1], [0.5], [0.0, 1.0]], "DATA.MEAN": [[0.5]], "DATA.STD": [[0.0, 0.0, 0.0]],
    "DATA.NUM_WORKERS": [-1], "DATA.PREFETCH_FACTOR": [0], "SEED": [-1, 2**76], "DISTILL.SDD_DIM": [0],
    "DISTILL.CACHE_VIEWS": [10**9], "TRAIN.EPOCHS": [0, -1], "DATA.SAMPLING_RATE": [0],
    "DISTILL.TEMPERATURE": [0.0, float("inf"), float("nan")], "TEST.NUM_CLIPS": [0], "TEST.NUM_CROPS": [0],
    "MODEL.NUM_CLASSES": [-1, 9], "DATA.MAX_FAIL_FRACTION": [-0.1, 1.5], "SOLVER.BASE_LR": [float("nan"), -1.0],
    "DEEPSPEED.PRECISION": ["fp8"], "DISTILL.METHOD": ["nope"], "MODEL.STUDENT": ["nope"],
    "MODEL.TEACHER_CHECKPOINTS": [["/no/such.pt", ""]], "DATA.MANIFEST_DIR": ["/no/such/folder"],  # named by the manifest file it would read
    "TRAIN.KEEP_CHECKPOINTS": [0], "TRAIN.MAX_BAD_STEPS": [0], "TRAIN.EMA_DECAY": [2.0]
}


NAMED = {  # keys whose error names the file they point to instead
    "DATA.MANIFEST_DIR": re.escape("/no/such/folder/train.json: manifest not found"),
    "MODEL.TEACHER_CHECKPOINTS": re.escape("/no/such.pt"),
}


def add_configs(audit):
    for key, values in ABSURD.items():
        for value in values:
            name = f"{key.strip()} {value!r}"
            config = audit.config(name, {key: value})
            audit.add("absurd configs", name, ["train_net", "--config", config],
                      ("refused", NAMED.get(key, rf"config keys? [^\n]*{re.escape(key)}")))
    file_as_dir = audit.config("output_dir_file", {"OUTPUT_DIR": __file__})
    audit.add("absurd configs", "OUTPUT_DIR a file", ["train_net", "--config", file_as_dir],
              ("refused", "config key 'OUTPUT_DIR'"))
    for name, text, pattern in [
            ("a duplicate key", "TRAIN:\n  EPOCHS: 1\n  EPOCHS: 2\n", r":3: key 'EPOCHS' is given twice .* lines 2 and 3"),
            ("not a mapping", "- 1\n", r"\.yaml:1: the top level must be a mapping"),
            ("yaml syntax", "TRAIN: [\n", r"\.yaml: not valid yaml:[\s\S]*line 2"),
            ("a string for a number", "TRAIN:\n  EPOCHS: two\n", r":2: config key 'TRAIN.EPOCHS'"),
            ("SOLVER.MIN_LR above BASE_LR", "SOLVER:\n  BASE_LR: 0.1\n  MIN_LR: 0.5\n", r"config keys? .*MIN_LR")]:
        audit.add("absurd configs", name, ["train_net", "--config", audit.config(name, text=text)], ("refused", pattern))
    audit.add("absurd configs", "an override of an unknown key",
              ["train_net", "--config", audit.config("unknown"), "TRAIN.EPOCH", "2"], ("refused", "TRAIN.EPOCH"))


def add_manifests(audit):
    """Copies of the manifests with one change; the error names the manifest, or the video where only decoding
    can tell (a start past the end, a missing or unreadable file)."""
    def sample(m, key, value):
        m["samples"][1][key] = value

    cases = {
        "an empty training split": ("train", lambda m: m.update(samples=[])),
        "an empty test split": ("test", lambda m: m.update(samples=[])),
        "a repeated id": ("train", lambda m: sample(m, "id", m["samples"][0]["id"])),
        "start after stop": ("train", lambda m: m["samples"][1].update(start_frame=9, stop_frame=3)),
        "a negative start": ("train", lambda m: sample(m, "start_frame", -1)),
        "fps negative": ("test", lambda m: sample(m, "fps", -1.0)),
        "fps NaN": ("test", lambda m: sample(m, "fps", float("nan"))),
        "fps infinite": ("test", lambda m: sample(m, "fps", float("inf"))),
        "a test label set of another size": ("test", lambda m: m["label_sets"]["label"].append("extra")),
        "a test label set with other names": ("test", lambda m: m["label_sets"]["label"].__setitem__(0, "x")),
        "a label outside its set": ("train", lambda m: sample(m, "targets", {"label": 8})),
        "a negative label": ("train", lambda m: sample(m, "targets", {"label": -1})),
        "a target of another head": ("train", lambda m: sample(m, "targets", {"verb": 0})),
        "no samples key": ("train", lambda m: m.pop("samples")),
        "a string for a frame": ("train", lambda m: sample(m, "start_frame", "3")),
        "start past the video's end": ("train", lambda m: sample(m, "start_frame", 10**6)),
        "a video that is not there": ("train", lambda m: sample(m, "path", "nowhere.mp4")),
        "a video that is a text file": ("train", lambda m: sample(m, "path", os.path.join(audit.work, "labels.txt"))),
    }
    for name, (split, edit) in cases.items():
        folder = os.path.join(audit.work, "manifests", str(len(audit.attacks)))
        shutil.copytree(os.path.join(audit.data, "manifests"), folder)
        path = os.path.join(folder, f"{split}.json")
        with open(path) as f:
            manifest = json.load(f)
        edit(manifest)
        with open(path, "w") as f:
            json.dump(manifest, f)
        decoded = manifest.get("samples") and len(manifest["samples"]) > 1 and name in (
            "start past the video's end", "a video that is not there", "a video that is a text file")
        named = re.escape(os.path.join(manifest["root"], manifest["samples"][1]["path"])) if decoded else re.escape(
            path)
        config = audit.config(folder, {"DATA.MANIFEST_DIR": folder, "OUTPUT_DIR": folder + "_run"})
        audit.add("bad manifests", name, ["train_net", "--config", config], ("refused", named))


if __name__ == "__main__":
    run(main)
