#!/usr/bin/env python3
"""Write small, valid ELF cores as fuzz seeds: notes of every kind we parse and a few PT_LOADs
whose words point into a fake object's data, so the fuzzer starts deep inside the readers."""
import json
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "corpus/core_reader"
os.makedirs(out, exist_ok=True)


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def core(variant: int) -> bytes:
    exe_base, heap, lib = 0x400000, 0x1000000, 0x7F0000000000
    loads = [  # vaddr, size, flags, fill
        (exe_base, 0x1000, 4, b"\x7fELF" + b"\0" * 0xFFC),
        (exe_base + 0x1000, 0x1000, 6, struct.pack("<Q", exe_base + 0x1010) * 0x200),
        (heap, 0x2000, 6, (struct.pack("<Q", exe_base + 0x1008) + struct.pack("<Q", 7)) * 0x200),
        (lib, 0x1000, 5, b"PyTuple_Type\0" * 0x13B + b"\0" * 1),
    ]
    files = [(exe_base, exe_base + 0x2000, 0, b"/bin/fake"), (lib, lib + 0x1000, 0, b"/lib/libfake.so")]
    nt_file = struct.pack("<QQ", len(files), 4096)
    nt_file += b"".join(struct.pack("<QQQ", s, e, o) for s, e, o, _ in files)
    nt_file += b"".join(n + b"\0" for *_, n in files)
    prpsinfo = bytearray(136)
    struct.pack_into("<I", prpsinfo, 24, 4242)
    prpsinfo[40:44] = b"fake"
    prstatus = bytearray(336)
    struct.pack_into("<I", prstatus, 32, 4242)
    auxv = struct.pack("<QQQQ", 9, exe_base + 0x100, 0, 0)
    meta = json.dumps({"pid": 4242, "capturedAt": 1.0 + variant, "rss": 8192, "startTime": 5,
                       "exe": "/bin/fake", "stoppedSeconds": 0.01,
                       "pseudoNames": [[heap, "[heap]"]]}).encode()
    notes = (note(b"CORE", 3, bytes(prpsinfo)) + note(b"CORE", 1, bytes(prstatus)) * (1 + variant)
             + note(b"CORE", 6, auxv) + note(b"CORE", 0x46494C45, nt_file) + note(b"LEAKHUNT", 1, meta))
    phnum = 1 + len(loads)
    off = 64 + 56 * phnum
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, off, 0, 0, len(notes), 0, 4)
    data_off = off + len(notes)
    body = b""
    for vaddr, size, flags, fill in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, flags, data_off + len(body), vaddr, 0, size, size, 4096)
        body += fill[:size].ljust(size, b"\0")
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    return ehdr + phdrs + notes + body


for v in range(2):
    with open(os.path.join(out, f"synthetic-{v}.core"), "wb") as f:
        f.write(core(v))
