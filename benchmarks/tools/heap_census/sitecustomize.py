"""Heap census of the study's dagster-daemon, for benchmarks/bench_paper_shape.py --heap-census.

On this folder's PYTHONPATH every Python process imports this at start-up; only the daemon
(``python -m scaling_assets.study.daemon``) starts the census: every SCALING_ASSETS_HEAP_CENSUS_S
seconds (default 120) one JSON line in $SCALING_ASSETS_HEAP_CENSUS with its RSS, threads, open file
descriptors, the number of objects the garbage collector tracks and the 25 commonest types. A type whose
count grows with the study's length and not with its size is what keeps the daemon's memory growing.
"""

import os

_PATH = os.environ.get("SCALING_ASSETS_HEAP_CENSUS")


def _cmdline() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _type_name(t: type) -> str:
    # Some extension types hold a descriptor, not a string, in __module__ (seen: getset_descriptor).
    module, name = getattr(t, "__module__", None), getattr(t, "__qualname__", None)
    return f"{module if isinstance(module, str) else '?'}.{name if isinstance(name, str) else t.__name__}"


def _census(path: str, interval_s: float) -> None:
    import gc
    import json
    import threading
    import time
    from collections import Counter

    import psutil

    me = psutil.Process()
    start = time.time()
    while True:
        line = {"pid": me.pid, "t_s": round(time.time() - start, 1), "rss_mib": round(me.memory_info().rss / 2**20, 1),
                "threads": threading.active_count(), "fds": me.num_fds()}
        try:
            counts = Counter(_type_name(type(o)) for o in gc.get_objects())
            line.update(objects=sum(counts.values()), top=counts.most_common(25))
        except Exception as exc:  # a census that fails once must not stop the RSS record
            line["error"] = repr(exc)
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
        time.sleep(interval_s)


if _PATH and "scaling_assets.study.daemon" in _cmdline():
    import threading

    threading.Thread(target=_census, args=(_PATH, float(os.environ.get("SCALING_ASSETS_HEAP_CENSUS_S", "120"))),
                     name="heap census", daemon=True).start()
