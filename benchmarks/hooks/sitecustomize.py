"""Benchmark-only timing hook (active only when RLHF_BENCH_TIMINGS names a file): wraps ``rlhf.stages.<name>.run``
as each stage module is imported, and appends {"stage", "seconds"} of every call to that file. This measures the
stages' own compute inside `make pipeline` / `dvc repro` without touching the core; bench.py puts this folder on
PYTHONPATH for the pipeline run only."""
import os

_OUT = os.environ.get("RLHF_BENCH_TIMINGS")

if _OUT:
    import functools
    import importlib.abc
    import json
    import sys
    import time

    STAGES = {"prepare", "pretrain", "sft", "collect", "annotate", "preferences", "reward", "ppo", "evaluate"}

    def _wrap(module, stage):
        inner = module.run

        @functools.wraps(inner)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                with open(_OUT, "a") as f:
                    f.write(json.dumps({"stage": stage, "seconds": time.perf_counter() - t0, "pid": os.getpid()}) + "\n")
        module.run = run

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            prefix, _, stage = name.rpartition(".")
            if prefix != "rlhf.stages" or stage not in STAGES:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    loader = spec.loader
                    inner_exec = loader.exec_module

                    def exec_module(module, _inner=inner_exec, _stage=stage):
                        _inner(module)
                        if hasattr(module, "run"):
                            _wrap(module, _stage)
                    loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, _Finder())
