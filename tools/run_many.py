"""Several runs of vidkd's tools in one process (tools/ or data_prep/; 1 process, or each rank under the deepspeed launcher), one
after the other, as `tools/<tool>.py ARGS` would run them: saves a process start (imports, DeepSpeed's set-up)
per run in the tests.

    python tools/run_many.py RUNS.json        # RUNS.json: [["train_net", ARG, ...], ["cache_teachers", ...], ...]
    python tools/run_many.py RUNS.json --outcomes OUT.json

Without --outcomes the first run that fails ends the process. With it every run is tried, and OUT.json gets one
entry per run: {"status": 0}, {"error": "ConfigError", "message": ...} for a VidkdError (what `vidkd.cli.run`
prints in one line), or {"traceback": ...} for any other exception.
"""
import argparse
import importlib.util
import json
import os
import sys
import traceback

from vidkd.errors import VidkdError

TOOLS = os.path.dirname(os.path.abspath(__file__))
FOLDERS = (TOOLS, os.path.join(os.path.dirname(TOOLS), "data_prep"))


def tool(name):
    """The `main` of tools/<name>.py (or data_prep/<name>.py)."""
    path = next((p for p in (os.path.join(f, f"{name}.py") for f in FOLDERS) if os.path.isfile(p)), None)
    if path is None:
        raise SystemExit(f"no tool {name!r} in {' or '.join(FOLDERS)}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def outcome(name, args):
    try:
        return {"status": tool(name)(args) or 0}
    except VidkdError as e:
        return {"error": type(e).__name__, "message": str(e)}
    except Exception:
        return {"traceback": traceback.format_exc()}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("runs")
    p.add_argument("--outcomes")
    p.add_argument("--local_rank", help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = p.parse_args()
    with open(args.runs) as f:
        runs = json.load(f)
    results = []
    for name, *run_args in runs:
        print(f"=== {name} {' '.join(run_args)}", flush=True)
        if args.outcomes:
            results.append(outcome(name, run_args))
            if os.environ.get("RANK", "0") == "0":  # one file, written by rank 0 of a multi-rank launch
                with open(args.outcomes, "w") as f:
                    json.dump(results, f)
        elif status := tool(name)(run_args):
            sys.exit(status)
