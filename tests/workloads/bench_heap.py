"""Benchmark workload: a CPython heap of about two million objects.

Prints "ready"; "step N" appends N more records to a module-level list (the leak the diff must
name); "guppy" times guppy3's hpy().heap() on the same heap, in-process, and replies "ok SECONDS".
"""
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
# Each record: a tuple, a str, a float and (mostly) a fresh int: ~4 objects.
RECORDS = [(i + 1000, "rec-%d" % i, i * 0.5) for i in range(N)]
INDEX = {r[1]: r for r in RECORDS[: N // 10]}
LEAK = []


def main():
    i = 0
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "step":
            for _ in range(int(cmd[1])):
                LEAK.append((i, "new-%d" % i, i * 0.25))
                i += 1
            print("ok", flush=True)
        elif cmd[0] == "guppy":
            from guppy import hpy

            t0 = time.perf_counter()
            heap = hpy().heap()
            dt = time.perf_counter() - t0
            print("ok %.3f %d" % (dt, heap.count), flush=True)


if __name__ == "__main__":
    main()
