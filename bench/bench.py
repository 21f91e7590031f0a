#!/usr/bin/env python3
"""bench/bench.py -- kiln's one benchmark command (issue 5): start `kiln serve`, drive ComfyUI's
default txt2img through the HTTP + WebSocket API, print a table beside ComfyUI's figures and
kiln's targets, and write the figures as JSON.

Owns: the checkpoints it writes under WORK/models/checkpoints, WORK/output, WORK/bench_server.log
and the server process it spawns (always stopped: SIGINT, then SIGKILL). Standard library only
(the lent GPU machines have python3 and nothing else). One thread drives the server; a second
one polls GET /gpus for peak GPU memory during the steady-state runs.

usage: bench.py --kiln PATH --work DIR [--gpus all|N] [--cpu N] [--quick] [--json FILE] [--save [DIR]]
Exit status 0 when the run completed (missed targets are reported, not failures); 1 when
something broke (a prompt failed, the server died or did not stop cleanly, a wait timed out);
2 for bad arguments. bench/README.md says what each figure means and how it is measured.
"""
import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ComfyUI on an H100 (issue 5) and kiln's targets: key -> (reference text, target text, test).
REFERENCE = {
    "s_per_image_b1": ("0.89", "<= 0.20", lambda v: v <= 0.20),
    "s_per_image_b4": ("0.30", "<= 0.10", lambda v: v <= 0.10),
    "it_per_s_b1": ("25.5", "", None),
    "it_per_s_b4": ("21.8", "", None),
    "vae_decode_s_b1": ("0.03", "", None),
    "png_s_b1": ("0.06", "", None),
    "ready_s": ("17-19", "< 1", lambda v: v < 1.0),
    "first_image_s": ("5.4-9.0", "< 2.5 cold", lambda v: v < 2.5),
    "rss_bytes": ("2.1 GiB/process", "", None),
    "speedup": ("", ">= 3.9 at 4 GPUs", None),  # judged as >= 0.975 N (targets())
    "rss_growth_pct": ("", "<= 5%", lambda v: v <= 5.0),
}


class BenchError(Exception):
    """Something broke: the run is not complete (exit status 1)."""


def now():
    return time.monotonic()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ===== HTTP (no proxies: the server is on loopback) =====

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None, timeout=30.0):
    """(status, parsed JSON body or text) of one request; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with OPENER.open(req, timeout=timeout) as r:
            code, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read()
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, raw.decode("utf-8", "replace")


# ===== WebSocket client (RFC 6455, client side; reads text frames, answers pings) =====

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocket:
    def __init__(self, host, port, path, timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = self.sock.recv(4096)
            if not c:
                raise BenchError(f"WebSocket {path}: connection closed during the handshake")
            head += c
        head, _, self.buf = head.partition(b"\r\n\r\n")  # a first frame may follow at once
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise BenchError(f"WebSocket {path}: handshake answered {lines[0]!r}, expected 101")
        fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if fields.get("sec-websocket-accept") != want:
            raise BenchError(f"WebSocket {path}: bad Sec-WebSocket-Accept {fields.get('sec-websocket-accept')!r}")
        self.frags, self.frag_op = [], None

    def _send(self, opcode, payload):
        mask = os.urandom(4)  # a client masks every frame (RFC 6455 5.3)
        n = len(payload)
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else \
            struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n) if n < 65536 else \
            struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _frame(self):
        """One whole frame from the buffer, or None; consumes nothing until the frame is complete
        (a socket timeout in the middle of a frame loses nothing)."""
        b = self.buf
        if len(b) < 2:
            return None
        fin, op, masked, n, at = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        if masked:
            at += 4
        if len(b) < at + n:
            return None
        payload = b[at:at + n]
        if masked:  # a server must not mask; unmask anyway
            key = b[at - 4:at]
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        self.buf = b[at + n:]
        return bool(fin), op, payload

    def recv_text(self, timeout):
        """The next whole text message (str), or None after `timeout` seconds without one."""
        end = now() + timeout
        while True:
            f = self._frame()
            if f is None:
                left = end - now()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    return None
                if not chunk:
                    raise BenchError("the server closed the WebSocket")
                self.buf += chunk
                continue
            fin, op, payload = f
            if op == 0x9:  # ping: answer with a pong carrying the same payload
                self._send(0xA, payload)
            elif op == 0x8:
                raise BenchError(f"the server closed the WebSocket: {payload!r}")
            elif op in (0x1, 0x2) or (op == 0x0 and self.frag_op is not None):
                if op != 0x0:
                    self.frags, self.frag_op = [], op
                self.frags.append(payload)
                if fin:
                    kind, data = self.frag_op, b"".join(self.frags)
                    self.frags, self.frag_op = [], None
                    if kind == 0x1:  # binary messages (previews) are ignored
                        return data.decode("utf-8", "replace")
            # pongs and stray continuations are ignored

    def close(self):
        try:
            self._send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


# ===== Machine, checkpoints, page cache =====

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def nvidia_smi_names():
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [m.group(1).strip() for m in re.finditer(r"GPU \d+: (.*?)(?: \(UUID.*)?$", out, re.M)]


def git_commit():
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=20)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-") or "unknown"


def write_checkpoints(kiln, ckdir, sd15, log):
    """The tiny checkpoint (always: it writes the tokenizer both use) and, for sd15, the full one."""
    os.makedirs(ckdir, exist_ok=True)
    for name, flag in [("tiny.safetensors", "--tiny")] + ([("sd15.safetensors", "--sd15")] if sd15 else []):
        path = os.path.join(ckdir, name)
        if os.path.exists(path) and (name != "tiny.safetensors" or os.path.exists(os.path.join(ckdir, "vocab.json"))):
            continue
        t = now()
        r = subprocess.run([kiln, "ckpt", flag, path + ".part"], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise BenchError(f"kiln ckpt {flag} {path}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
        os.replace(path + ".part", path)
        log(f"wrote {path} in {now() - t:.1f} s")


def resident_pct(path):
    """Percent of the file's pages in the page cache (mmap + mincore through ctypes), or None."""
    try:
        import ctypes
        import mmap
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        size = os.path.getsize(path)
        if size == 0:
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
                vec = (ctypes.c_ubyte * pages)()
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                return 100.0 * sum(1 for c in bytes(vec) if c & 1) / pages  # bit 0: resident
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    except Exception:
        return None


def evict_page_cache(path):
    """Drops the checkpoint's pages from the page cache; returns (methods that worked, resident %)."""
    methods = []
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # DONTNEED leaves dirty pages: write them back first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            methods.append("posix_fadvise(DONTNEED)")
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            methods.append("drop_caches")
        except OSError:
            pass
    return methods, resident_pct(path)


def rss_of(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ===== The benchmark =====

LOAD_RE = re.compile(r"loaded (.+?) on (cuda|cpu) (\d+) in ([0-9.]+) s \(([^)]*)\)")
# sd_model_prefill's line: the worker filled the first prompt's host copy during its warm-up
PREFILL_RE = re.compile(r"host copy of (.+?) for (cuda|cpu) (\d+) (filled from the file|already there) in ([0-9.]+) s")


class Bench:
    def __init__(self, a):
        self.a = a
        self.say = (lambda *x: None) if a.quiet else (lambda *x: print(*x, flush=True))
        self.srv = None
        self.url = None
        self.ws = None
        self.seed = 1000
        # the workflow is read once, here: reading it at each prompt put a cold file read (after
        # the page cache is evicted, on a disk busy with the server's start) inside the first
        # image's time (0.1-0.2 s on the lent machines: the client's cost, not the server's)
        with open(os.path.join(REPO, "examples", "demo.json")) as f:
            self.template = f.read()
        self.client_id = "kiln-bench-%d" % os.getpid()
        self.log_path = os.path.join(a.work, "bench_server.log")
        self.log_at = 0  # where the next log scan starts
        self.r = {}

    # ----- server -----

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=15):
        return "\n".join(self.log_text().splitlines()[-n:])

    def alive(self):
        if self.srv.poll() is not None:
            raise BenchError(f"kiln serve exited with status {self.srv.returncode}; log tail:\n{self.log_tail()}")

    def start(self):
        a = self.a
        port = a.port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [a.kiln, "serve", "--port", str(port), "--models-dir", os.path.join(a.work, "models"),
               "--output-directory", os.path.join(a.work, "output"),
               "--input-directory", os.path.join(a.work, "input"), "--temp-dir", os.path.join(a.work, "temp"),
               "--metrics-every", "0"]
        if a.cpu:
            cmd += ["--cpu", "--cpu-workers", str(a.cpu)]
        elif a.gpus != "all":
            cmd += ["--gpus", ",".join(str(i) for i in range(int(a.gpus)))]
        self.r["server_command"] = " ".join(cmd)
        log = open(self.log_path, "w")
        t0 = now()
        self.srv = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return t0

    def stop(self):
        """SIGINT, then SIGKILL; the exit status (None when it had to be killed)."""
        if self.ws:
            self.ws.close()
            self.ws = None
        if not self.srv or self.srv.poll() is not None:
            return self.srv.returncode if self.srv else None
        self.srv.send_signal(signal.SIGINT)
        try:
            return self.srv.wait(30)
        except subprocess.TimeoutExpired:
            self.srv.kill()
            self.srv.wait(30)
            return None

    # ----- prompts -----

    def workflow(self, batch=1, size=None, steps=None):
        p = json.loads(self.template)
        self.seed += 1  # a new seed each time: the output cache never hits; the texts stay fixed
        p["4"]["inputs"]["ckpt_name"] = self.ckpt
        p["3"]["inputs"].update(seed=self.seed, steps=steps or self.a.steps)
        s = size or self.a.size
        p["5"]["inputs"].update(width=s, height=s, batch_size=batch)
        p["9"]["inputs"]["filename_prefix"] = "bench"
        return p

    def submit(self, prompt, device):
        self.alive()
        code, body = http("POST", self.url + "/prompt", {"prompt": prompt, "client_id": self.client_id},
                          {"X-TARGET-GPU": str(device)})
        if code != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise BenchError(f"POST /prompt (device {device}) -> {code}: {str(body)[:400]}")
        return body["prompt_id"]

    def history(self, pid):
        code, h = http("GET", f"{self.url}/history/{pid}")
        if code != 200 or not isinstance(h, dict):
            raise BenchError(f"GET /history/{pid} -> {code}: {str(h)[:300]}")
        return h.get(pid)

    def check_success(self, pid):
        """The /history entry of a finished prompt; its execution_start .. execution_success in s."""
        e = self.history(pid)
        if not e:
            raise BenchError(f"prompt {pid} finished but is not in /history")
        st = e.get("status", {})
        if st.get("status_str") != "success":
            raise BenchError(f"prompt {pid}: status {st.get('status_str')}: {json.dumps(st.get('messages'))[:600]}")
        ts = {m[0]: m[1].get("timestamp") for m in st.get("messages", []) if isinstance(m[1], dict)}
        if ts.get("execution_start") is not None and ts.get("execution_success") is not None:
            return (ts["execution_success"] - ts["execution_start"]) / 1000.0
        return None

    def wait_ws(self, ids, timeout):
        """Reads WebSocket events until every prompt in ids has ended (`executing` with node null);
        returns {id: [(receive time, type, data), ...]}. A failed prompt or a dead server raises."""
        events = {i: [] for i in ids}
        left = set(ids)
        end = now() + timeout
        while left:
            if now() > end:
                raise BenchError(f"{len(left)} prompt(s) not done after {timeout:.0f} s: {sorted(left)[:3]}")
            text = self.ws.recv_text(min(1.0, max(0.01, end - now())))
            if text is None:
                self.alive()
                continue
            t = now()
            try:
                m = json.loads(text)
            except ValueError:
                continue
            d = m.get("data") if isinstance(m.get("data"), dict) else {}
            pid = d.get("prompt_id")
            if pid not in events:
                continue
            events[pid].append((t, m.get("type"), d))
            if m.get("type") in ("execution_error", "execution_interrupted"):
                raise BenchError(f"prompt {pid}: {m.get('type')}: {json.dumps(d)[:600]}")
            if m.get("type") == "executing" and d.get("node") is None:
                left.discard(pid)
        return events

    def run_one(self, batch, device=0):
        """One prompt, timed from its POST to its end over the WebSocket; per-node durations."""
        t0 = now()
        pid = self.submit(self.workflow(batch), device)
        ev = self.wait_ws([pid], self.a.timeout)[pid]
        wall = ev[-1][0] - t0
        exec_s = self.check_success(pid)
        # a node runs from its `executing` to the next executing / its executed / execution_success
        nodes, cur, t_cur = {}, None, None
        for t, typ, d in ev:
            if cur is not None and (typ in ("executing", "execution_success") or
                                    (typ == "executed" and d.get("node") == cur)):
                nodes[cur] = nodes.get(cur, 0.0) + t - t_cur
                cur = None
            if typ == "executing" and d.get("node") is not None:
                cur, t_cur = d["node"], t
        # sampler rate: progress v is sent when step v ends, so the first..last messages span
        # (n - 1) steps: it/s = (n - 1) / (t_last - t_first)
        prog = [t for t, typ, d in ev if typ == "progress" and d.get("node") == "3"]
        its = (len(prog) - 1) / (prog[-1] - prog[0]) if len(prog) >= 2 and prog[-1] > prog[0] else None
        return {"wall_s": wall, "exec_s": exec_s, "sampler_s": nodes.get("3"), "vae_decode_s": nodes.get("8"),
                "png_s": nodes.get("9"), "it_per_s": its, "progress_events": len(prog)}

    def run_many(self, per_device):
        """per_device: {device: count} of batch-1 prompts, submitted interleaved across devices at
        once; seconds from the first POST until all have ended."""
        order = []
        for k in range(max(per_device.values())):
            order += [d for d, n in sorted(per_device.items()) if k < n]
        t0 = now()
        ids = [self.submit(self.workflow(1), d) for d in order]
        self.wait_ws(ids, self.a.timeout * max(per_device.values()))
        t = now() - t0
        for pid in ids:
            self.check_success(pid)
        return t

    def load_lines(self):
        """Model load lines logged since the last call: [(device kind, index, seconds, how)]."""
        text = self.log_text()
        new, self.log_at = text[self.log_at:], len(text)
        return [(m.group(2), int(m.group(3)), float(m.group(4)), m.group(5)) for m in LOAD_RE.finditer(new)]

    # ----- the phases -----

    def run(self):
        a, r = self.a, self.r
        ckdir = os.path.join(a.work, "models", "checkpoints")
        write_checkpoints(a.kiln, ckdir, self.ckpt == "sd15.safetensors", self.say)
        ckpath = os.path.join(ckdir, self.ckpt)
        r["checkpoint"] = self.ckpt
        r["checkpoint_bytes"] = os.path.getsize(ckpath)

        # 1-2. start-up and the first image, the checkpoint's pages evicted from the page cache
        methods, resident = evict_page_cache(ckpath)
        r["first_image_cache_method"] = "+".join(methods) or None
        r["first_image_resident_pct"] = None if resident is None else round(resident, 2)
        r["first_image_cold_cache"] = resident < 5.0 if resident is not None else bool(methods)
        t0 = self.start()
        end = t0 + a.timeout
        while True:
            self.alive()
            try:
                code, stats = http("GET", self.url + "/system_stats", timeout=2)
                if code == 200 and isinstance(stats, dict):
                    break
            except OSError:
                pass
            if now() > end:
                raise BenchError(f"no answer from {self.url}/system_stats after {a.timeout:.0f} s")
            time.sleep(0.005)
        r["ready_s"] = now() - t0
        wf = self.workflow(1)
        t_post = now()
        pid = self.submit(wf, 0)
        r["first_post_s"] = now() - t_post  # the first POST /prompt's round trip, seen by the client
        while not self.history(pid):  # "the first image in /history", as ComfyUI's scripts poll it
            self.alive()
            if now() > end + a.timeout:
                raise BenchError(f"the first prompt is not in /history after {now() - t0:.0f} s")
            time.sleep(0.01)
        r["first_image_s"] = now() - t0
        # whether kiln read the checkpoint ahead at start because the last run used it (sched/prefetch.c)
        r["first_image_recalled"] = "that the last run used ahead" in self.log_text()
        self.check_success(pid)
        self.say(f"ready {r['ready_s']:.3f} s, first image {r['first_image_s']:.3f} s "
                 f"(cache: {r['first_image_cache_method']}, resident {r['first_image_resident_pct']}%)")

        kind = "cpu" if a.cpu else "cuda"
        devs = [d for d in stats.get("devices", []) if d.get("type") == kind]
        n = len(devs)
        if n == 0:
            raise BenchError(f"/system_stats lists no {kind} device: {json.dumps(stats.get('devices'))[:300]}")
        r["n_gpus"] = n
        r["device_kind"] = kind
        _, gj = http("GET", self.url + "/gpus")
        gpus = gj.get("gpus", []) if isinstance(gj, dict) else []
        names = [g.get("name") for g in gpus] or ([] if a.cpu else nvidia_smi_names())
        r["machine"] = {"gpus": names, "cpu": cpu_model(), "cores": os.cpu_count(),
                        "devices_used": [d.get("name") for d in devs]}
        pre = PREFILL_RE.search(self.log_text())
        r["prefill_s"] = float(pre.group(5)) if pre else None  # the host copy, filled during the warm-up
        loads = self.load_lines()
        r["load_from_disk_s"] = loads[0][2] if loads else None
        r["load_from_disk_how"] = loads[0][3] if loads else None
        r["load_from_host_s"] = None
        r["load_from_host_how"] = None
        r["load_from_gpu_s"] = None  # no GPU-to-GPU loading yet
        if a.first_only:
            return

        # 3. steady state on device 0, GPU memory polled meanwhile
        self.ws = WebSocket("127.0.0.1", int(self.url.rsplit(":", 1)[1]), f"/ws?clientId={self.client_id}")
        stop, peak = threading.Event(), {"bytes": None, "samples": 0}

        def poll_vram():
            while not stop.wait(0.2):
                try:
                    _, g = http("GET", self.url + "/gpus", timeout=5)
                    for e in g.get("gpus", []):
                        if e.get("device") == 0 and e.get("memory_used") is not None:
                            peak["bytes"] = max(peak["bytes"] or 0, e["memory_used"])
                            peak["samples"] += 1
                except Exception:
                    pass

        poller = threading.Thread(target=poll_vram, daemon=True)
        poller.start()
        try:
            for b in (1, 4):
                self.run_one(b)  # warm-up at this batch size (activation plan, kernels)
                runs = [self.run_one(b) for _ in range(a.repeats)]
                r[f"runs_b{b}"] = runs
                r[f"s_per_image_b{b}"] = median(x["wall_s"] for x in runs) / b
                for k in ("it_per_s", "sampler_s", "vae_decode_s", "png_s", "exec_s"):
                    r[f"{k}_b{b}"] = median(x[k] for x in runs)
                self.say(f"batch {b}: {r[f's_per_image_b{b}']:.3f} s/image, "
                         f"{r[f'it_per_s_b{b}'] or 0:.2f} it/s ({a.repeats} prompts)")
        finally:
            stop.set()
            poller.join(10)
        r["peak_vram_bytes"] = peak["bytes"]
        r["vram_samples"] = peak["samples"]
        r["rss_bytes"] = rss_of(self.srv.pid)

        # 4 and 6. several devices: load from the host copy, then alone vs all at once
        for k in ("t_alone_s", "t_all_s", "speedup", "rss_1_bytes", "rss_all_bytes", "rss_growth_pct"):
            r[k] = None
        if n >= 2:
            m = a.mg_prompts
            r["mg_prompts_per_gpu"] = m
            r["t_alone_s"] = self.run_many({0: m})
            time.sleep(0.3)
            r["rss_1_bytes"] = rss_of(self.srv.pid)
            self.load_lines()
            self.run_many({1: 1})  # loads the model on device 1 while device 0 holds it
            loads = self.load_lines()
            if loads:
                r["load_from_host_s"], r["load_from_host_how"] = loads[0][2], loads[0][3]
            if n > 2:
                self.run_many({d: 1 for d in range(2, n)})  # load + warm up the others before timing
            # a second prompt on each: the first run of a graph records it, the second captures it as a
            # CUDA graph; GPU 0 is past both, so the others must be too (steady state on every GPU)
            self.run_many({d: 1 for d in range(1, n)})
            r["t_all_s"] = self.run_many({d: m for d in range(n)})
            r["speedup"] = r["t_alone_s"] * n / r["t_all_s"]
            time.sleep(0.3)
            r["rss_all_bytes"] = rss_of(self.srv.pid)
            if r["rss_1_bytes"] and r["rss_all_bytes"]:
                r["rss_growth_pct"] = 100.0 * (r["rss_all_bytes"] - r["rss_1_bytes"]) / r["rss_1_bytes"]
            self.say(f"{n} devices: {m} prompts alone {r['t_alone_s']:.2f} s, {m} each on all "
                     f"{r['t_all_s']:.2f} s, speedup {r['speedup']:.2f}")


# ===== Report =====

def fmt(v, key):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if key.endswith("_bytes"):
        return f"{v / 2**30:.2f} GiB"
    if key.endswith("_pct"):
        return f"{v:+.2f}%"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


ROWS = [
    ("s_per_image_b1", "s/image, batch 1"), ("s_per_image_b4", "s/image, batch 4"),
    ("it_per_s_b1", "sampler it/s, batch 1"), ("it_per_s_b4", "sampler it/s, batch 4"),
    ("sampler_s_b1", "KSampler s, batch 1"), ("vae_decode_s_b1", "VAEDecode s, batch 1"),
    ("png_s_b1", "SaveImage s, batch 1"), ("exec_s_b1", "history exec s, batch 1"),
    ("sampler_s_b4", "KSampler s, batch 4"), ("vae_decode_s_b4", "VAEDecode s, batch 4"),
    ("png_s_b4", "SaveImage s, batch 4"), ("ready_s", "ready s (spawn to /system_stats)"),
    ("first_image_s", "first image s (spawn to /history)"), ("load_from_disk_s", "model load s, from disk"),
    ("load_from_host_s", "model load s, from host copy"), ("load_from_gpu_s", "model load s, from a GPU"),
    ("peak_vram_bytes", "peak GPU 0 memory used"), ("rss_bytes", "server RSS"),
    ("n_gpus", "devices"), ("t_alone_s", "mg prompts on GPU 0 alone, s"), ("t_all_s", "mg prompts on all, s"),
    ("speedup", "speedup (t_alone * N / t_all)"), ("rss_growth_pct", "RSS growth, 1 -> N devices"),
]


def targets(r):
    """Each reference figure with its target; `met` is judged only on the reference workflow (the
    SD 1.5 checkpoint at 512x512, 20 steps, on GPUs), and first_image_s only with a cold cache."""
    ref = r.get("reference_workflow")
    out = {}
    for k, (comfy, tgt, test) in REFERENCE.items():
        v, met = r.get(k), None
        if k == "speedup" and r.get("n_gpus"):
            test = lambda x, n=r["n_gpus"]: x >= 0.975 * n  # 3.9 at 4 GPUs, the same efficiency at N
        if ref and test and v is not None and not (k == "first_image_s" and not r.get("first_image_cold_cache")):
            met = bool(test(v))
        out[k] = {"comfyui_h100": comfy or None, "target": tgt or None, "met": met}
    return out


def table(r):
    tg = r.get("targets", {})
    lines = [f"kiln bench  commit {r.get('commit')}  {r.get('date')}",
             f"machine: {', '.join(r['machine'].get('gpus') or []) or 'no GPU'}; {r['machine'].get('cpu')}, "
             f"{r['machine'].get('cores')} cores" if r.get("machine") else "machine: ?",
             f"workflow: {r.get('checkpoint')}, {r['config']['size']}x{r['config']['size']}, {r['config']['steps']} "
             f"steps euler/normal cfg 8, {r['config']['repeats']} prompts per batch size on device 0",
             "",
             f"{'figure':36} {'kiln':>12} {'ComfyUI H100':>16} {'kiln target':>16}  met"]
    for k, label in ROWS:
        t = tg.get(k, {})
        met = {True: "yes", False: "NO", None: ""}[t.get("met")]
        lines.append(f"{label:36} {fmt(r.get(k), k):>12} {t.get('comfyui_h100') or '':>16} "
                     f"{t.get('target') or '':>16}  {met}")
    lines.append(f"first image with a cold page cache: {fmt(r.get('first_image_cold_cache'), '')} "
                 f"({r.get('first_image_cache_method')}; {r.get('first_image_resident_pct')}% resident before start)")
    if not r.get("reference_workflow"):
        lines.append("targets not judged: not the reference workflow (sd15, 512x512, 20 steps, GPUs)")
    if r.get("error"):
        lines.append(f"ERROR: {r['error']}")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description="kiln's benchmark (bench/README.md)")
    ap.add_argument("--kiln", required=True, help="the kiln binary")
    ap.add_argument("--work", required=True, help="work folder (checkpoints, outputs, server log)")
    ap.add_argument("--gpus", default="all", help="all (default) or N: the first N GPUs")
    ap.add_argument("--cpu", type=int, default=0, metavar="N", help="N CPU devices instead of GPUs")
    ap.add_argument("--quick", action="store_true", help="tiny checkpoint, 64x64, 4 steps, 2 prompts each")
    ap.add_argument("--first-only", action="store_true",
                    help="stop after the start-up figures (ready, first image with a cold cache)")
    ap.add_argument("--ckpt", choices=["sd15", "tiny"], help="default: tiny with --quick or --cpu, else sd15")
    ap.add_argument("--size", type=int, help="image side (default 512; 64 with --quick)")
    ap.add_argument("--steps", type=int, help="sampler steps (default 20; 4 with --quick)")
    ap.add_argument("--repeats", type=int, help="prompts per batch size (default 5; 2 with --quick)")
    ap.add_argument("--mg-prompts", type=int, help="multi-GPU prompts per GPU (default 10; 3 with --quick)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one prompt may take (default 300)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    ap.add_argument("--save", nargs="?", const=os.path.join(REPO, "bench", "results"), metavar="DIR",
                    help="also write DIR/DATE-MACHINE-COMMIT.json (default DIR: bench/results)")
    ap.add_argument("--commit", help="commit to record (default: git rev-parse --short HEAD)")
    ap.add_argument("--quiet", action="store_true", help="only the table")
    a = ap.parse_args(argv)
    if a.gpus != "all" and not (a.gpus.isdigit() and int(a.gpus) >= 1):
        ap.error("--gpus takes 'all' or a positive count")
    a.kiln, a.work = os.path.abspath(a.kiln), os.path.abspath(a.work)
    if not os.access(a.kiln, os.X_OK):
        ap.error(f"{a.kiln} is not an executable")
    q = a.quick
    a.size = a.size or (64 if q else 512)
    a.steps = a.steps or (4 if q else 20)
    a.repeats = a.repeats or (2 if q else 5)
    a.mg_prompts = a.mg_prompts or (3 if q else 10)
    if a.steps < 2 or a.repeats < 1 or a.mg_prompts < 1 or a.size < 8 or a.size % 8:
        ap.error("--steps >= 2, --repeats >= 1, --mg-prompts >= 1, --size a multiple of 8")
    ckpt = a.ckpt or ("tiny" if q or a.cpu else "sd15")
    os.makedirs(a.work, exist_ok=True)

    b = Bench(a)
    b.ckpt = ckpt + ".safetensors"
    r = b.r
    r.update(commit=a.commit or git_commit(), date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             command=" ".join(shlex.quote(x) for x in ["python3", sys.argv[0]] + argv),
             config={"size": a.size, "steps": a.steps, "repeats": a.repeats, "mg_prompts_per_gpu": a.mg_prompts,
                     "checkpoint": ckpt, "sampler": "euler", "scheduler": "normal", "cfg": 8.0,
                     "cpu_devices": a.cpu or None, "gpus": None if a.cpu else a.gpus},
             error=None)
    # SIGTERM unwinds like Ctrl-C, so the server is stopped either way
    def on_term(*_):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        b.run()
    except (Exception, KeyboardInterrupt) as e:  # anything: the figures so far are still written
        r["error"] = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (BenchError, OSError, KeyboardInterrupt)):
            traceback.print_exc()
        rc = 1
    finally:
        code = b.stop()
        r["server_exit"] = code
        if rc == 0 and code != 0:
            r["error"] = f"kiln serve exit status {code} after SIGINT (None: killed); log tail:\n{b.log_tail()}"
            rc = 1
    r.setdefault("machine", {"gpus": [] if a.cpu else nvidia_smi_names(), "cpu": cpu_model(),
                             "cores": os.cpu_count()})
    for k in ("s_per_image_b1", "s_per_image_b4", "it_per_s_b1", "it_per_s_b4", "ready_s", "first_image_s",
              "n_gpus", "speedup", "rss_growth_pct", "peak_vram_bytes", "rss_bytes"):
        r.setdefault(k, None)
    r["loads"] = [{"device_kind": k, "device": d, "s": t, "how": how} for k, d, t, how in
                  (((m.group(2), int(m.group(3)), float(m.group(4)), m.group(5)) for m in LOAD_RE.finditer(b.log_text())))]
    r["reference_workflow"] = (ckpt == "sd15" and a.size == 512 and a.steps == 20 and not a.cpu)
    r["targets"] = targets(r)
    print(table(r), flush=True)
    out = []
    if a.json:
        out.append(os.path.abspath(a.json))
    if a.save:
        m = r["machine"]
        gp = m.get("gpus") or []
        mslug = f"{slug(gp[0])}-x{len(gp)}" if gp else f"cpu{a.cpu or ''}-{slug(m.get('cpu') or 'unknown')}"
        day = r["date"][:10]
        out.append(os.path.join(os.path.abspath(a.save), f"{day}-{mslug}-{r['commit'] or 'nocommit'}.json"))
    for path in out:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(r, f, indent=1)
            f.write("\n")
        print(f"wrote {path}")
    if rc:
        print(f"bench.py: FAILED: {r['error']}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
