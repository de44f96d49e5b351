// Test workload for the generic census: objects of classes with vtables, and native malloc growth.
// Protocol: prints "ready", then for each stdin line does the work and prints "ok".
//   widgets N   allocate N Widget objects (kept)
//   gadgets N   allocate N Gadget objects (kept)
//   malloc M    malloc and touch M MiB in 64 KiB chunks (kept; below the mmap threshold: brk heap)
//   churn N     allocate and free N Widgets (no growth)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

struct Widget {
    virtual ~Widget() {}
    virtual int size() const { return 1; }
    long payload[3];
};
struct Gadget : Widget {
    int size() const override { return 2; }
};

int main() {
    std::vector<void*> keep;
    keep.reserve(1 << 20);
    std::string line;
    std::printf("ready\n");
    std::fflush(stdout);
    while (std::getline(std::cin, line)) {
        long n = line.find(' ') == std::string::npos ? 0 : atol(line.c_str() + line.find(' ') + 1);
        if (line.rfind("widgets", 0) == 0) {
            for (long i = 0; i < n; i++) keep.push_back(new Widget());
        } else if (line.rfind("gadgets", 0) == 0) {
            for (long i = 0; i < n; i++) keep.push_back(new Gadget());
        } else if (line.rfind("malloc", 0) == 0) {
            for (long i = 0; i < n * 16; i++) {
                char* p = static_cast<char*>(std::malloc(64 << 10));
                std::memset(p, 0x5a, 64 << 10);
                keep.push_back(p);
            }
        } else if (line.rfind("churn", 0) == 0) {
            for (long i = 0; i < n; i++) delete new Widget();
        }
        std::printf("ok\n");
        std::fflush(stdout);
    }
}
