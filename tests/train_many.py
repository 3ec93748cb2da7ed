"""Several runs of vidkd's tools in one process (1 process, or each rank under the deepspeed launcher), one
after the other, as `tools/<tool>.py ARGS` would run them: saves a process start (imports, DeepSpeed's set-up)
per run in the tests.

    python tests/train_many.py RUNS.json        # RUNS.json: [["train_net", ARG, ...], ["cache_teachers", ...], ...]
"""
import importlib.util
import json
import os
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


if __name__ == "__main__":
    with open(sys.argv[-1]) as f:  # the deepspeed launcher puts --local_rank=N first
        runs = json.load(f)
    for name, *args in runs:
        print(f"=== {name} {' '.join(args)}", flush=True)
        status = tool(name)(args)
        if status:
            sys.exit(status)
