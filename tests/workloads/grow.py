"""Grows a list of records (five objects each: a tuple, an int, a str, a tuple, a float) at
MIB_PER_SECOND until the process's RSS reaches TARGET_MIB, then holds it. A big heap for the
e2e check that sizes the analyzer Job from its snapshot pair, a slow grower for others. Its main
thread runs Python code at least every second (PEP 768 scripts run then)."""
import os
import time

TARGET = int(os.environ.get("TARGET_MIB", "1024")) << 20
RATE = float(os.environ.get("MIB_PER_SECOND", "64")) * (1 << 20)
# Records per step: about 9 MiB, or a second's worth when slower.
BATCH = max(1000, min(40000, int(RATE / 240)))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


data = []
i = 0
print("growing to %d MiB" % (TARGET >> 20), flush=True)
while rss() < TARGET:
    start = time.monotonic()
    for _ in range(BATCH):
        data.append((i, str(i), (float(i),)))
        i += 1
    time.sleep(max(0.0, BATCH * 240 / RATE - (time.monotonic() - start)))
print("holding %d records, %d MiB" % (len(data), rss() >> 20), flush=True)
while True:
    time.sleep(1)
