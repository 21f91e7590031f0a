#!/usr/bin/env python3
"""tests/load/load.py -- the load test of issue 6 (item 5), against a running `kiln serve`.

N client threads submit P prompts in total to POST /prompt, about 80% valid (the tiny txt2img at
64x64, 1 step, distinct seeds, a PreviewImage so the disk stays small) and about 20% invalid of
several kinds (bad JSON, no "prompt", unknown class_type, a missing input, out-of-range values, a
link to a missing node, no output node, an unknown target device, a body over the size limit),
while W other threads keep opening WebSockets on /ws?clientId=... and dropping them (after the
first message, after a close frame, or in the middle of the handshake). Then it waits for the
queues to drain and checks:
  - every 200 carried a prompt_id, and each of those has exactly one entry in /history (the raw
    JSON is parsed with duplicate keys detected), with status success; /history holds nothing else;
  - every invalid request got the 4xx its kind calls for, with ComfyUI's error shape: a JSON object
    with "error": {"type", "message", ...}; prompt-level refusals also carry "node_errors" (a dict,
    naming the bad node for validation errors);
  - no 5xx and no transport error on POST /prompt, every complete WebSocket handshake got 101;
  - the server still answers GET /prompt with an empty queue.
Prints p50/p99/max of the POST /prompt latency (all requests, and valid ones alone) and the
throughput; exits 1 on any violation. Standard library only: threads, http.client, raw sockets.

usage: load.py HOST PORT [--prompts P] [--clients N] [--ws-clients W] [--ckpt NAME]
               [--max-body BYTES] [--drain-timeout S] [--seed S] [--json OUT] [--procs K] [--rate R]
Threads: the client threads each own one keep-alive HTTPConnection; results go into per-thread
lists, merged after join (no shared mutable state besides the work counter, under a lock).
"""
import argparse
import base64
import http.client
import json
import multiprocessing
import os
import random
import socket
import sys
import threading
import time

# ===== Prompts =====


def valid_prompt(ckpt, seed):
    """The tiny txt2img: 64x64, 1 step, PreviewImage (writes to temp/, not output/)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 1, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": f"load test {seed}", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


# Each invalid kind: (name, expected status, shape) where shape is "error" (an "error" object),
# "prompt" (also "node_errors", a dict) or "node" (node_errors names the given node).
INVALID_KINDS = [
    ("bad_json", 400, "error", None),
    ("no_prompt", 400, "prompt", None),
    ("unknown_class", 400, "prompt", None),
    ("missing_input", 400, "node", "3"),
    ("out_of_range", 400, "node", "5"),
    ("missing_link", 400, "node", "3"),
    ("no_output", 400, "prompt", None),
    ("bad_target", 400, "prompt", None),
    ("huge_body", 413, "error", None),
]


def invalid_request(kind, ckpt, seed, max_body):
    """(body bytes, extra headers) for an invalid request of this kind."""
    p = valid_prompt(ckpt, seed)
    headers = {}
    if kind == "bad_json":
        return random.choice([b"not json{", b'{"prompt": {"3": ', b"", b"[1, 2", b"\xff\xfe{}"]), headers
    if kind == "no_prompt":
        return json.dumps({"client_id": "x", "promt": p}).encode(), headers
    if kind == "unknown_class":
        p["9"]["class_type"] = "NoSuchNode%d" % seed
    elif kind == "missing_input":
        del p["3"]["inputs"]["steps"]
    elif kind == "out_of_range":
        p["5"]["inputs"]["width"] = random.choice([0, -64, 1 << 20])
    elif kind == "missing_link":
        p["3"]["inputs"]["model"] = ["99", 0]
    elif kind == "no_output":
        del p["9"]
    elif kind == "bad_target":
        headers["X-TARGET-GPU"] = random.choice(["7", "x", "-1"])
    elif kind == "huge_body":
        p["6"]["inputs"]["text"] = "a" * (max_body + 1024)
    return json.dumps({"prompt": p}).encode(), headers


# ===== Submitting clients =====


class Plan:
    """Hands out request numbers 0..total-1 to the client threads (of every process: the counter
    is a multiprocessing.Value when the clients are spread over processes)."""

    def __init__(self, total, shared=None):
        self.total, self.next, self.lock, self.shared = total, 0, threading.Lock(), shared

    def take(self):
        if self.shared is not None:
            with self.shared.get_lock():
                if self.shared.value >= self.total:
                    return None
                self.shared.value += 1
                return self.shared.value - 1
        with self.lock:
            if self.next >= self.total:
                return None
            self.next += 1
            return self.next - 1


def client_proc(k, n_threads, host, port, shared, args, out):
    """One client process (--procs): n_threads client threads; their records go to out."""
    plan = Plan(args.prompts, shared)
    lists = [[] for _ in range(n_threads)]
    ts = [threading.Thread(target=client_thread, args=(host, port, plan, args, lists[j], args.seed * 1000 + k * n_threads + j))
          for j in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put([r for lst in lists for r in lst])


def client_thread(host, port, plan, args, results, rng_seed):
    rnd = random.Random(rng_seed)
    conn = None
    while True:
        i = plan.take()
        if i is None:
            break
        if args.rate:  # open loop: request i leaves at its time, whatever the earlier answers did
            time.sleep(max(0.0, args.t_start + i / args.rate - time.time()))
        seed = 1000 + i  # distinct seeds: each valid prompt really runs
        if rnd.random() < 0.8:
            kind, want, shape, node = "valid", 200, None, None
            body = json.dumps({"prompt": valid_prompt(args.ckpt, seed), "client_id": f"load-{rng_seed}"}).encode()
            headers = {}
        else:
            kind, want, shape, node = rnd.choice(INVALID_KINDS)
            body, headers = invalid_request(kind, args.ckpt, seed, args.max_body)
        headers["Content-Type"] = "application/json"
        rec = {"i": i, "kind": kind, "want": want, "shape": shape, "node": node}
        if kind == "huge_body":
            huge_request(host, port, body, headers, rec)
            results.append(rec)
            continue
        for attempt in range(2):  # a keep-alive connection the server closed: one fresh retry
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=60)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/prompt", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                rec["lat"] = time.perf_counter() - t0
                rec["status"], rec["body"] = resp.status, data
                if resp.will_close:
                    conn.close()
                    conn = None
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                conn.close()
                conn = None
                if attempt == 1 or not isinstance(e, (http.client.RemoteDisconnected, BrokenPipeError,
                                                      ConnectionResetError)):
                    rec["status"], rec["error"] = None, f"{type(e).__name__}: {e}"
                    break
        results.append(rec)
    if conn is not None:
        conn.close()


def huge_request(host, port, body, headers, rec):
    """A body over the limit, the way curl sends one: headers with Expect: 100-continue, the body
    only after a 100 (the server may answer 413 at once from Content-Length and close; http.client
    would meet a broken pipe writing the body before it could read that answer)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (f"POST /prompt HTTP/1.1\r\nHost: {host}:{port}\r\n{head}Content-Length: {len(body)}\r\n"
           "Expect: 100-continue\r\n\r\n").encode()
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=60) as s:
            s.sendall(req)
            f = s.makefile("rb")
            line = f.readline()
            if b" 100 " in line + b" ":
                while f.readline() not in (b"\r\n", b""):
                    pass
                try:
                    s.sendall(body)
                except OSError:
                    pass  # refused midway: the answer may still be there
                line = f.readline()
            status = int(line.split()[1])
            length = None
            while True:
                h = f.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            data = f.read(length) if length is not None else f.read()
        rec["lat"] = time.perf_counter() - t0
        rec["status"], rec["body"] = status, data
    except (OSError, ValueError, IndexError) as e:
        rec["status"], rec["error"] = None, f"{type(e).__name__}: {e}"


# ===== WebSocket churn =====


def ws_thread(host, port, stop, stats, rng_seed):
    rnd = random.Random(rng_seed)
    n = 0
    while not stop.is_set():
        n += 1
        mode = rnd.choice(["first_message", "close_frame", "mid_handshake", "connect_only", "no_read"])
        path = f"/ws?clientId=ws-{rng_seed}-{n}"
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        try:
            s = socket.create_connection((host, port), timeout=30)
        except OSError as e:
            stats["errors"].append(f"ws connect: {e}")
            continue
        try:
            if mode == "connect_only":
                pass
            elif mode == "mid_handshake":
                s.sendall(req[: rnd.randrange(1, len(req) - 4)])
            else:
                s.sendall(req)
                if mode != "no_read":
                    head = b""
                    while b"\r\n\r\n" not in head:
                        c = s.recv(4096)
                        if not c:
                            break
                        head += c
                    line = head.split(b"\r\n", 1)[0]
                    if b" 101 " not in line + b" ":
                        stats["errors"].append(f"ws handshake ({mode}) answered {line[:100]!r}")
                    else:
                        stats["upgraded"] += 1
                        if mode == "close_frame":  # a masked close frame, code 1000
                            mask = os.urandom(4)
                            payload = bytes(b ^ mask[k % 4] for k, b in enumerate(b"\x03\xe8"))
                            s.sendall(b"\x88\x82" + mask + payload)
        except OSError as e:
            stats["errors"].append(f"ws {mode}: {e}")
        finally:
            s.close()
        stats["opened"] += 1
        time.sleep(rnd.random() * 0.05)  # ~40 connections/s per thread


# ===== Checks =====


def get_json(host, port, path, pairs_hook=None, timeout=60):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path} -> {r.status}: {data[:200]!r}")
        return json.loads(data, object_pairs_hook=pairs_hook) if pairs_hook else json.loads(data)
    finally:
        conn.close()


def check_shape(rec):
    """None when the 4xx body has the shape its kind calls for, else what is wrong."""
    try:
        j = json.loads(rec["body"])
    except ValueError:
        return f"body is not JSON: {rec['body'][:120]!r}"
    if not isinstance(j, dict) or not isinstance(j.get("error"), dict):
        return f"no \"error\" object: {rec['body'][:200]!r}"
    e = j["error"]
    if not isinstance(e.get("type"), str) or not isinstance(e.get("message"), str):
        return f"\"error\" lacks type/message: {e}"
    if rec["shape"] in ("prompt", "node") and not isinstance(j.get("node_errors"), dict):
        return f"no \"node_errors\" dict: {rec['body'][:200]!r}"
    if rec["shape"] == "node" and rec["node"] not in j["node_errors"]:
        return f"node_errors does not name node {rec['node']}: {list(j['node_errors'])}"
    return None


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--ws-clients", type=int, default=10)
    ap.add_argument("--ckpt", default="tiny.safetensors")
    ap.add_argument("--max-body", type=int, default=1 << 20, help="the server's body limit in bytes")
    ap.add_argument("--drain-timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--rate", type=float, default=0,
                    help="open loop: send request i at start + i/RATE seconds (0: closed loop, each client sends "
                         "its next request when the last one is answered)")
    ap.add_argument("--procs", type=int, default=1,
                    help="spread the clients over this many processes (one Python process holds the GIL: on a "
                         "machine with many cores its threads, not the server, bound the latency)")
    args = ap.parse_args()
    random.seed(args.seed)
    host, port = args.host, args.port
    fails = []

    # ----- submit, with WebSocket churn alongside -----
    plan = Plan(args.prompts)
    per_thread = [[] for _ in range(args.clients)]
    stop = threading.Event()
    ws_stats = [{"opened": 0, "upgraded": 0, "errors": []} for _ in range(args.ws_clients)]
    ws = [threading.Thread(target=ws_thread, args=(host, port, stop, ws_stats[k], 10000 + k), daemon=True)
          for k in range(args.ws_clients)]
    args.t_start = time.time() + 0.5  # open loop (--rate): the schedule's origin, after every client started
    procs = max(1, min(args.procs, args.clients))
    if procs > 1:  # each process runs its share of the client threads; they share the counter
        mp = multiprocessing.get_context("fork")
        shared, out = mp.Value("l", 0), mp.Queue()
        cl = [mp.Process(target=client_proc, args=(k, args.clients // procs + (k < args.clients % procs), host, port,
                                                   shared, args, out)) for k in range(procs)]
    else:
        cl = [threading.Thread(target=client_thread, args=(host, port, plan, args, per_thread[k], args.seed * 1000 + k),
                               daemon=True) for k in range(args.clients)]
    for t in ws:
        t.start()
    t0 = time.perf_counter()
    for t in cl:
        t.start()
    if procs > 1:
        per_thread = [out.get() for _ in cl]  # before join: a full pipe would block the children
    for t in cl:
        t.join()
    t_submit = time.perf_counter() - t0
    recs = sorted((r for lst in per_thread for r in lst), key=lambda r: r["i"])

    # ----- drain (the WebSocket churn goes on meanwhile) -----
    drained = False
    deadline = time.time() + args.drain_timeout
    while time.time() < deadline:
        try:
            q = get_json(host, port, "/queue")
        except Exception as e:  # noqa: BLE001 -- reported below if it never answers
            fails.append(f"GET /queue while draining: {e}")
            break
        if not q["queue_running"] and not q["queue_pending"]:
            drained = True
            break
        time.sleep(0.2)
    t_total = time.perf_counter() - t0
    stop.set()
    for t in ws:
        t.join(timeout=30)
    if not drained:
        fails.append(f"the queues did not drain within {args.drain_timeout:.0f} s")

    # ----- POST /prompt statuses -----
    if len(recs) != args.prompts:
        fails.append(f"{len(recs)} requests recorded, expected {args.prompts}")
    accepted = []
    by_kind = {}
    for r in recs:
        k = by_kind.setdefault(r["kind"], {"n": 0, "ok": 0})
        k["n"] += 1
        st = r.get("status")
        bad = None
        if st is None:
            bad = f"transport error: {r.get('error')}"
        elif st >= 500:
            bad = f"5xx: {st} {r['body'][:200]!r}"
        elif st != r["want"]:
            bad = f"status {st}, expected {r['want']}: {r['body'][:200]!r}"
        elif st == 200:
            try:
                pid = json.loads(r["body"])["prompt_id"]
                assert isinstance(pid, str) and pid
                accepted.append(pid)
            except (ValueError, KeyError, AssertionError):
                bad = f"200 without a prompt_id: {r['body'][:200]!r}"
        else:
            bad = check_shape(r)
        if bad:
            fails.append(f"request {r['i']} ({r['kind']}): {bad}")
        else:
            k["ok"] += 1
    if len(set(accepted)) != len(accepted):
        fails.append(f"duplicate prompt_ids among the {len(accepted)} accepted")

    # ----- /history: exactly one entry per accepted prompt, nothing else -----
    dup_keys = []

    def pairs(kv):
        seen = {}
        for k, v in kv:
            if k in seen:
                dup_keys.append(k)
            seen[k] = v
        return seen

    try:
        hist = get_json(host, port, f"/history?max_items={args.prompts * 2 + 100}", pairs)
        for pid in accepted:
            e = hist.get(pid)
            if e is None:
                fails.append(f"accepted prompt {pid} has no /history entry")
            elif e.get("status", {}).get("status_str") != "success":
                fails.append(f"prompt {pid}: status {e.get('status')}")
        extra = set(hist) - set(accepted)
        if extra:
            fails.append(f"{len(extra)} /history entries for no accepted prompt: {sorted(extra)[:5]}")
        if dup_keys:
            fails.append(f"/history has several entries for {sorted(set(dup_keys))[:5]}")
        # per id, for a sample: the same single entry
        for pid in random.sample(accepted, min(20, len(accepted))):
            one = get_json(host, port, f"/history/{pid}")
            if list(one) != [pid]:
                fails.append(f"/history/{pid} -> keys {list(one)[:5]}")
    except Exception as e:  # noqa: BLE001
        fails.append(f"reading /history: {e}")

    # ----- WebSockets, and the server still serving -----
    ws_opened = sum(s["opened"] for s in ws_stats)
    ws_upgraded = sum(s["upgraded"] for s in ws_stats)
    ws_errors = [e for s in ws_stats for e in s["errors"]]
    for e in ws_errors[:10]:
        fails.append(e)
    if len(ws_errors) > 10:
        fails.append(f"... and {len(ws_errors) - 10} more WebSocket errors")
    if args.ws_clients and ws_upgraded == 0:
        fails.append("no WebSocket handshake completed")
    try:
        q = get_json(host, port, "/prompt", timeout=10)
        if q != {"exec_info": {"queue_remaining": 0}}:
            fails.append(f"GET /prompt after the load: {q}")
    except Exception as e:  # noqa: BLE001
        fails.append(f"the server does not answer after the load: {e}")

    # ----- figures -----
    lat = [r["lat"] * 1000 for r in recs if "lat" in r]
    lat_valid = [r["lat"] * 1000 for r in recs if "lat" in r and r["kind"] == "valid"]
    fig = {
        "prompts": len(recs), "clients": args.clients, "ws_clients": args.ws_clients,
        "accepted": len(accepted), "rejected": len(recs) - len(accepted),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else float("nan"),
        "valid_p50_ms": pct(lat_valid, 50), "valid_p99_ms": pct(lat_valid, 99),
        "submit_s": t_submit, "submit_per_s": len(recs) / t_submit if t_submit else 0,
        "total_s": t_total, "completed_per_s": len(accepted) / t_total if t_total else 0,
        "ws_opened": ws_opened, "ws_upgraded": ws_upgraded,
        "kinds": {k: v["n"] for k, v in sorted(by_kind.items())},
    }
    print(f"load: {fig['prompts']} POST /prompt from {args.clients} clients ({fig['accepted']} accepted, "
          f"{fig['rejected']} rejected: {', '.join(f'{k} {v}' for k, v in fig['kinds'].items() if k != 'valid')})")
    print(f"load: POST /prompt latency p50 {fig['p50_ms']:.2f} ms, p99 {fig['p99_ms']:.2f} ms, "
          f"max {fig['max_ms']:.2f} ms (valid only: p50 {fig['valid_p50_ms']:.2f}, p99 {fig['valid_p99_ms']:.2f})")
    print(f"load: submitted in {t_submit:.1f} s ({fig['submit_per_s']:.0f} requests/s); all {len(accepted)} "
          f"ran in {t_total:.1f} s ({fig['completed_per_s']:.1f} prompts/s)")
    print(f"load: {args.ws_clients} WebSocket threads opened and dropped {ws_opened} connections "
          f"({ws_upgraded} upgraded)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1)
    if fails:
        for f in fails[:40]:
            print("FAIL:", f)
        if len(fails) > 40:
            print(f"FAIL: ... and {len(fails) - 40} more")
        return 1
    print("load: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
