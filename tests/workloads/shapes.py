"""Leak shapes and non-leak controls for leakhunt's CPython tests.

Usage: python shapes.py SCENARIO. Prints "ready", then for each stdin line "step N" runs N more
iterations of the scenario and replies "ok"; "quit" (or EOF) ends it.
"""
import collections
import functools
import sys


class Service:
    """Keeps a per-instance history: the instance-attribute leak."""

    def __init__(self):
        self.name = "svc"
        self.history = []


service = Service()
SESSIONS = {}
SEEN = set()
REGISTRY = {"sessions": {}, "config": {"debug": False}}
EVENTS = collections.deque()
BY_USER = collections.defaultdict(list)
WORK = []


@functools.lru_cache(maxsize=None)
def lookup(n):
    return [n, n + 1, n + 2]


@functools.lru_cache(maxsize=128)
def bounded(n):
    return [n, n * 2]


def iteration(scenario, i):
    if scenario == "module_dict":
        SESSIONS["s%d" % i] = {"user": i, "ttl": 30.0 + i}
    elif scenario == "module_set":
        SEEN.add("visitor-%d" % i)
    elif scenario == "instance_attr":
        service.history.append((i, float(i)))
    elif scenario == "nested":
        REGISTRY["sessions"][i] = [i, "tok%d" % i]
    elif scenario == "lru_unbounded":
        lookup(i)
    elif scenario == "deque":
        EVENTS.append({"seq": i})
    elif scenario == "defaultdict":
        BY_USER["user%d" % i].append(i * 1.5)
    elif scenario == "bounded_lru":
        bounded(10_000 + i)
    elif scenario == "churn":
        WORK.append([i] * 8)
        if len(WORK) >= 64:
            WORK.clear()
        tmp = {"k%d" % k: float(k) for k in range(16)}
        del tmp
    elif scenario == "native":
        # Real malloc outside Python objects: 256 KiB per iteration, touched, never freed.
        size = 256 << 10
        p = LIBC.malloc(size)
        ctypes.memset(p, 0x5A, size)
    else:
        raise SystemExit("unknown scenario %r" % scenario)


def main():
    scenario = sys.argv[1]
    if scenario == "bounded_lru":
        for n in range(256):  # fill the cache before the first snapshot
            bounded(n)
    if scenario == "native":
        global ctypes, LIBC
        import ctypes

        LIBC = ctypes.CDLL(None)
        LIBC.malloc.restype = ctypes.c_void_p
        LIBC.malloc.argtypes = [ctypes.c_size_t]
    i = 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        for _ in range(int(cmd[1])):
            iteration(scenario, i)
            i += 1
        if scenario == "churn":
            WORK.clear()
        print("ok", flush=True)


if __name__ == "__main__":
    main()
