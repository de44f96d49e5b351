"""Leak shapes and non-leak controls for leakhunt's CPython tests.

Usage: python shapes.py SCENARIO [busy]. With "busy", a thread keeps rewriting a bounded scratch
dict meanwhile (memory written while a snapshot is taken; never a leak). Prints "ready", then for each stdin line "step N" runs N more
iterations of the scenario and replies "ok"; "quit" (or EOF) ends it. In "in_progress" the second
and later steps reply from inside a function that holds a list it is building, until the next line.
"""
import collections
import functools
import io
import logging
import sys
import time
import weakref


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
LOG = logging.getLogger("svc")


class Item:
    """Something both held and weakly indexed."""

    def __init__(self, i):
        self.i = i
        self.payload = [i, float(i), "item-%d" % i]


class Slotted:
    """Weakly referenceable through its `__weakref__` slot."""

    __slots__ = ("__weakref__", "i", "payload")

    def __init__(self, i):
        self.i = i
        self.payload = [i, float(i)]


HELD = []
BY_ID = weakref.WeakValueDictionary()
LIVE = weakref.WeakSet()
REFS = []


@functools.lru_cache(maxsize=None)
def lookup(n):
    return [n, n + 1, n + 2]


@functools.lru_cache(maxsize=128)
def bounded(n):
    return [n, n * 2]


def hold(n):
    """What a request handler has in hand when a snapshot comes: a list only its frame holds."""
    batch = []
    for k in range(n * 10):
        batch.append("item-%d" % k)
    print("ok", flush=True)
    return sys.stdin.readline()


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
    elif scenario == "logging_handlers":
        # A handler added on every request: logging also keeps a weak reference to each one
        # (logging._handlerList), which owns nothing.
        LOG.addHandler(logging.StreamHandler(io.StringIO()))
    elif scenario == "weak_values":
        item = Item(i)
        HELD.append(item)
        BY_ID[i] = item
    elif scenario == "weak_set":
        item = Item(i)
        HELD.append(item)
        LIVE.add(item)
    elif scenario == "weakref_slots":
        obj = Slotted(i)
        HELD.append(obj)
        REFS.append(weakref.ref(obj))
    elif scenario == "in_progress":
        pass  # the work is hold(), called by main
    elif scenario == "native":
        # Real malloc outside Python objects: 256 KiB per iteration, touched, never freed.
        size = 256 << 10
        p = LIBC.malloc(size)
        ctypes.memset(p, 0x5A, size)
    else:
        raise SystemExit("unknown scenario %r" % scenario)


SCRATCH = {}


def busy():
    """Rewrites SCRATCH's 2000 entries with fresh objects, forever. Objects the garbage collector
    does not track (bytes, str): the writes never start a collection, whose transient lists no
    snapshot, however taken, can walk."""
    n = 0
    while True:
        SCRATCH[n % 2000] = (str(n) * 3).encode()
        n += 1
        if n % 500 == 0:
            time.sleep(0.001)


def main():
    scenario = sys.argv[1]
    if sys.argv[2:] == ["busy"]:
        import threading

        threading.Thread(target=busy, daemon=True).start()
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
    line = sys.stdin.readline()
    while line:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        for _ in range(int(cmd[1])):
            iteration(scenario, i)
            i += 1
        if scenario == "churn":
            WORK.clear()
        if scenario == "in_progress" and i > int(cmd[1]):
            line = hold(int(cmd[1]))
            continue
        print("ok", flush=True)
        line = sys.stdin.readline()


if __name__ == "__main__":
    main()
