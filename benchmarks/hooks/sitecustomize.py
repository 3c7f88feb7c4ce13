"""Benchmark-only timing hook (active only when RLHF_BENCH_TIMINGS names a file): wraps ``rlhf.stages.<name>.run``
as each stage module is imported, and the promotion gates' model evaluations (``tasks.promotion.judge_reward`` and
``judge_policy``: loading, sampling and scoring with the challenger and champion models), and appends {"stage",
"seconds"} of every call to that file. This measures the compute inside `make pipeline` / `dvc repro` without
touching the core; bench.py puts this folder on PYTHONPATH for the pipeline run only. The stages are dvc.yaml's
(``tasks.graph.declared_stages`` of the process's working directory, the project root), read when the first
``rlhf.stages`` module is imported: a process elsewhere that never imports one never reads it."""
import os

_OUT = os.environ.get("RLHF_BENCH_TIMINGS")

if _OUT:
    import functools
    import importlib.abc
    import json
    import sys
    import time

    from tasks.graph import declared_stages

    STAGE_MODULE = "rlhf.stages."
    # module -> (functions to time, the name they are recorded under); the stages' modules are added from dvc.yaml
    TIMED = {"tasks.promotion": (("judge_reward", "judge_policy"), "promote-gate-evaluation")}

    @functools.lru_cache(maxsize=None)
    def _stages_read() -> bool:
        TIMED.update({STAGE_MODULE + s: (("run",), s) for s in declared_stages()})
        return True

    def _timed(name):
        """(functions to time, stage name) of module ``name``, or None when it is not timed."""
        if name.startswith(STAGE_MODULE) and name.count(".") == 2:
            _stages_read()
        return TIMED.get(name)

    def _wrap(module, attr, stage):
        inner = getattr(module, attr)

        @functools.wraps(inner)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                with open(_OUT, "a") as f:
                    f.write(json.dumps({"stage": stage, "seconds": time.perf_counter() - t0, "pid": os.getpid()}) + "\n")
        setattr(module, attr, run)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            timed = _timed(name)
            if timed is None:
                return None
            attrs, stage = timed
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    loader = spec.loader
                    inner_exec = loader.exec_module

                    def exec_module(module, _inner=inner_exec, _stage=stage, _attrs=attrs):
                        _inner(module)
                        for attr in _attrs:
                            if hasattr(module, attr):
                                _wrap(module, attr, _stage)
                    loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, _Finder())
