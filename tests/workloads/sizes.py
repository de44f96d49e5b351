"""Objects of every variable-size type the walker sizes, with their sizes as CPython reports them.

Prints "ready", then one line per object: `KIND ADDRESS SIZE`, where SIZE is sys.getsizeof (its
allocation, GC header and pre-header included), then "end"; then waits for stdin to close, so the
objects stay alive while the test snapshots the process.
"""
import re
import sys

keep = []


def gen():
    a, b, c = 1, 2, 3
    yield a + b + c


def deep_gen(n):
    xs = list(range(n))
    for x in xs:
        yield x


async def coro():
    return 1


async def agen():
    yield 1


def frame_of():
    local = [1, 2, 3]
    return sys._getframe(), local


g_new = gen()
g_suspended = deep_gen(50)
next(g_suspended)
g_done = gen()
list(g_done)
c = coro()
ag = agen()
f, _ = frame_of()
m1 = re.match(r"(a)(b)?(c)?", "abc")
m2 = re.search(r"x", "yyx")
grown = []
for i in range(1000):
    grown.append(i)
shrunk = list(range(5000))
del shrunk[100:]
big_dict = {str(i): i for i in range(3000)}
for i in range(2000):
    del big_dict[str(i)]
objects = [
    ("generator", g_new),
    ("generator", g_suspended),
    ("generator", g_done),
    ("coroutine", c),
    ("async_generator", ag),
    ("frame", f),
    ("re.Match", m1),
    ("re.Match", m2),
    ("bytes", b""),
    ("bytes", b"x" * 7),
    ("bytes", bytes(range(256)) * 40),
    ("str", "abc" * 11),
    ("str", "caf\xe9" * 9),
    ("str", "\u0394" * 13),
    ("str", "\U0001f600" * 5),
    ("tuple", ()),
    ("tuple", (1, 2, 3, 4, 5)),
    ("int", 10**100),
    ("int", -(2**70)),
    ("list", []),
    ("list", [None] * 77),
    ("list", grown),
    ("list", shrunk),
    ("dict", {"a": 1}),
    ("dict", big_dict),
    ("static-type", int),
    ("static-type", dict),
    ("bytearray", bytearray(b"y" * 300)),
]
keep.append(objects)
print("ready", flush=True)
for kind, o in objects:
    print(kind, hex(id(o)), sys.getsizeof(o), flush=True)
print("end", flush=True)
sys.stdin.read()
c.close()
