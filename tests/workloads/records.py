"""A heap of N records `(i, str(i), (float(i),))` (five objects each) for the analyzer's scale
benchmark. Prints "ready"; on a line from stdin appends N/10 more and prints "ok"; then waits for
stdin to close."""
import sys

n = int(sys.argv[1])
data = [(i, str(i), (float(i),)) for i in range(n)]
print("ready", flush=True)
sys.stdin.readline()
data.extend((i, str(i), (float(i),)) for i in range(n, n + n // 10))
print("ok", flush=True)
sys.stdin.read()
