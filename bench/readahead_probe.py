#!/usr/bin/env python3
"""bench/readahead_probe.py -- what a cold start reads besides the checkpoint, and what reading it
ahead would give. Answers: how many bytes of the GPU libraries (and caches) does a first image
touch, and does a first image start faster when exactly those pages are read into the page cache
first, with large parallel reads, instead of page fault by page fault?

  scan FILE...          print resident runs of each file (mincore), as JSON, to stdout
  read LIST.json [N]    read those runs with N threads (default 8), print the seconds
  file PATH N MIB order|quarters|direct
                        read all of PATH with N threads in chunks of MIB MiB: chunks taken in
                        file order, or each thread one contiguous part, or chunks in file order
                        with O_DIRECT (no page cache); print seconds and MB/s
Run on a lent GPU machine as root (drop_caches), see session 8's s8c.sh."""
import ctypes
import json
import os
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_runs(path, gap=16):
    """[(offset, length)] of resident pages, runs merged across holes of up to `gap` pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return []
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return []
        n = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * n)()
        rc = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        if rc:
            return []
    finally:
        os.close(fd)
    runs, start, last = [], None, None
    for i in range(n):
        if vec[i] & 1:
            if start is not None and i - last <= gap:
                last = i
            else:
                if start is not None:
                    runs.append((start * PAGE, (last + 1 - start) * PAGE))
                start = last = i
    if start is not None:
        runs.append((start * PAGE, (last + 1 - start) * PAGE))
    return runs


def scan(paths):
    out = []
    for p in paths:
        rp = os.path.realpath(p)
        if not os.path.isfile(rp) or any(o["path"] == rp for o in out):
            continue
        runs = resident_runs(rp)
        if runs:
            out.append({"path": rp, "size": os.path.getsize(rp), "runs": runs,
                        "bytes": sum(r[1] for r in runs)})
    out.sort(key=lambda o: -o["bytes"])
    return out


def read_direct(path, threads, piece):
    """Reads all of path with O_DIRECT (no page cache) in pieces of `piece` bytes taken in file
    order by `threads` threads, each into its own page-aligned buffer."""
    import mmap
    size = os.path.getsize(path)
    lock = threading.Lock()
    nxt = [0]

    def worker():
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, piece)
        try:
            while True:
                with lock:
                    off = nxt[0]
                    nxt[0] += piece
                if off >= size:
                    break
                os.preadv(fd, [buf], off)
        finally:
            buf.close()
            os.close(fd)

    t = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return time.monotonic() - t


def read(lst, threads, piece=4 << 20, own=False):
    """Reads every run of lst in pieces of `piece` bytes with `threads` threads: pieces taken in
    list order by whichever thread is free, or (own) thread i reads run i alone, front to back."""
    jobs = []
    for o in lst:
        for off, ln in o["runs"]:
            part = []
            while ln > 0:
                k = min(ln, piece)
                part.append((o["path"], off, k))
                off += k
                ln -= k
            jobs.append(part)
    flat = [p for part in jobs for p in part]
    lock = threading.Lock()
    nxt = [0]

    def take(i):
        if own:
            return jobs[i].pop(0) if i < len(jobs) and jobs[i] else None
        with lock:
            if nxt[0] >= len(flat):
                return None
            nxt[0] += 1
            return flat[nxt[0] - 1]

    def worker(i):
        fds = {}
        while True:
            job = take(i)
            if job is None:
                break
            path, off, ln = job
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = os.open(path, os.O_RDONLY)
            os.pread(fd, ln, off)
        for fd in fds.values():
            os.close(fd)

    t = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return time.monotonic() - t


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "scan":
        res = scan(sys.argv[2:])
        json.dump(res, sys.stdout)
        sys.stderr.write("".join(f"{o['bytes'] / 2**20:9.1f} MiB of {o['size'] / 2**20:9.1f} in {len(o['runs'])} runs  {o['path']}\n" for o in res))
        sys.stderr.write(f"total {sum(o['bytes'] for o in res) / 2**20:.1f} MiB\n")
    elif len(sys.argv) >= 3 and sys.argv[1] == "read":
        lst = json.load(open(sys.argv[2]))
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 8
        print(f"{read(lst, n):.3f}")
    elif len(sys.argv) == 6 and sys.argv[1] == "file":
        path, n, chunk, how = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) << 20, sys.argv[5]
        size = os.path.getsize(path)
        if how == "order":
            t = read([{"path": path, "runs": [(0, size)]}], n, chunk)
        elif how == "direct":
            t = read_direct(path, n, chunk)
        else:
            part = (size + n - 1) // n
            runs = [(i * part, min(part, size - i * part)) for i in range(n)]
            t = read([{"path": path, "runs": runs}], n, chunk, own=True)
        print(f"{t:.3f} s {size / t / 1e6:.0f} MB/s")
    else:
        sys.exit(__doc__)
