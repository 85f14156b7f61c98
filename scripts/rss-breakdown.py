#!/usr/bin/env python3
"""Where a process's resident memory sits, from a copy of its /proc/PID/smaps.

    scripts/rss-breakdown.py SMAPS [SMAPS...]

For each file: the resident KiB per kind of mapping (the binary's own pages, shared libraries,
anonymous memory by mapping size, thread stacks, the brk heap) and the ten largest anonymous
mappings. Anonymous mappings of 2 MiB + a guard page are thread stacks as glibc makes them;
mimalloc's arenas and segments are the other large anonymous mappings. LazyFree is memory the
allocator gave back with MADV_FREE: still counted in RSS until the kernel needs it.
"""
import re
import sys
from collections import defaultdict

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$")


def mappings(path):
    cur = None
    with open(path) as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                if cur:
                    yield cur
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                cur = {"size": end - start, "perms": m.group(3), "name": m.group(4).strip(), "rss": 0, "lazy": 0}
            elif cur is not None:
                key, _, rest = line.partition(":")
                if key in ("Rss", "LazyFree"):
                    cur["rss" if key == "Rss" else "lazy"] = int(rest.split()[0])
    if cur:
        yield cur


def kind(m, exe):
    name = m["name"]
    if name == "[heap]":
        return "brk heap"
    if name.startswith("[stack"):
        return "main stack"
    if name.startswith("["):
        return "kernel (" + name + ")"
    if name:
        return "the binary" if name == exe else "files and libraries"
    mib = m["size"] / (1 << 20)
    if 7.9 < mib <= 8.01 or 1.9 < mib <= 2.01:
        return "anonymous, thread-stack sized (2 or 8 MiB)"
    if mib >= 32:
        return "anonymous, >= 32 MiB (allocator arenas)"
    return "anonymous, < 32 MiB"


def main():
    for path in sys.argv[1:]:
        maps = list(mappings(path))
        named = [m["name"] for m in maps if m["name"].startswith("/") and "x" in m["perms"]]
        exe = named[0] if named else ""
        by = defaultdict(lambda: [0, 0])
        for m in maps:
            k = kind(m, exe)
            by[k][0] += m["rss"]
            by[k][1] += 1
        total = sum(v[0] for v in by.values())
        lazy = sum(m["lazy"] for m in maps)
        print(f"## {path}: {total / 1024:.1f} MiB resident, of which {lazy / 1024:.1f} MiB LazyFree "
              "(given back with MADV_FREE, reclaimed only under memory pressure)")
        for k, (rss, n) in sorted(by.items(), key=lambda kv: -kv[1][0]):
            print(f"  {rss / 1024:8.1f} MiB  {n:4d} mappings  {k}")
        anon = sorted((m for m in maps if not m["name"]), key=lambda m: -m["rss"])[:10]
        print("  largest anonymous mappings (resident / size, MiB):")
        for m in anon:
            print(f"    {m['rss'] / 1024:8.1f} / {m['size'] / (1 << 20):8.1f}  {m['perms']}")


if __name__ == "__main__":
    main()
