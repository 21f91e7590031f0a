#!/usr/bin/env python3
# tests/gpu/rss.py -- one host copy of each model, measured on a machine with 2+ GPUs (issue 4:
# "with the same model resident on 4 GPUs, process RSS stays within 5% of its value with it on
# 1 GPU"; "loading a model on GPU 1 after GPU 0 reads nothing from disk").
# Run by hand through the device tool, not by ctest:
#   python3 tests/gpu/rss.py KILN_BINARY WORKDIR [--sd15] [--out FILE.json] [--cpu N]
# (--cpu N: a dry run on N CPU devices instead of the GPUs, for machines without a GPU)
# It writes a checkpoint into WORKDIR/models/checkpoints (the tiny one, or with --sd15 the full
# SD 1.5 layout, 2.1 GB of fp16) plus the tiny tokenizer, starts `kiln serve` on every GPU, then
# runs one small txt2img pinned to GPU 0, 1, ... in turn (X-TARGET-GPU), each loading the model on
# one more GPU. After each it reads the server's VmRSS from /proc and the load time from the log.
# Passes when RSS with the model on every GPU is within 5% of RSS with it on GPU 0 only, and
# every load after the first filled no new host image (the log's "host copy" line).
# Prints a table and writes the figures as JSON. Exit status 0 = pass.
import json, os, re, signal, subprocess, sys, time, urllib.request

def main():
    cpu = int(sys.argv[sys.argv.index("--cpu") + 1]) if "--cpu" in sys.argv else 0
    args = [a for a in sys.argv[1:] if not a.startswith("--") and not (cpu and a == str(cpu))]
    if len(args) < 2:
        print(__doc__ or "usage: rss.py KILN WORKDIR [--sd15] [--out FILE]"); return 2
    kiln, work = os.path.abspath(args[0]), os.path.abspath(args[1])
    sd15 = "--sd15" in sys.argv
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    ck = os.path.join(work, "models", "checkpoints")
    os.makedirs(ck, exist_ok=True)
    tiny = os.path.join(ck, "tiny.safetensors")
    if not os.path.exists(tiny):  # also writes the tiny tokenizer next to it
        subprocess.run([kiln, "ckpt", "--tiny", tiny], check=True, stdout=subprocess.DEVNULL)
    name = "tiny.safetensors"
    if sd15:
        name = "sd15.safetensors"
        if not os.path.exists(os.path.join(ck, name)):
            t = time.time()
            subprocess.run([kiln, "ckpt", "--sd15", os.path.join(ck, name)], check=True, stdout=subprocess.DEVNULL)
            print(f"wrote the SD 1.5 checkpoint in {time.time() - t:.1f} s")
    port = 8199
    log = open(os.path.join(work, "rss_server.log"), "w")
    srv = subprocess.Popen([kiln, "serve", "--port", str(port), "--models-dir", os.path.join(work, "models"),
                            "--output-directory", os.path.join(work, "output"), "--temp-directory", work,
                            "--input-directory", os.path.join(work, "input")] +
                           (["--cpu", "--cpu-workers", str(cpu), "--threads", "1"] if cpu else []),
                           stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    def req(method, path, body=None, headers={}):
        data = json.dumps(body).encode() if body is not None else None
        h = {"Content-Type": "application/json"}; h.update(headers)
        r = urllib.request.Request(url + path, data=data, method=method, headers=h)
        with urllib.request.urlopen(r, timeout=60) as f:
            return json.loads(f.read())
    def rss():
        for line in open(f"/proc/{srv.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    try:
        t0 = time.time()
        while True:
            try:
                stats = req("GET", "/system_stats"); break
            except Exception:
                if srv.poll() is not None or time.time() - t0 > 120: raise SystemExit("server did not start")
                time.sleep(0.2)
        ready_s = time.time() - t0
        gpus = [d for d in stats["devices"] if d.get("type") == ("cpu" if cpu else "cuda")]
        if len(gpus) < 2: raise SystemExit(f"needs 2+ GPUs, found {len(gpus)}")
        rows, base = [], rss()
        wf = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "demo.json")))
        wf["4"]["inputs"]["ckpt_name"] = name
        wf["5"]["inputs"].update(width=64, height=64)
        wf["3"]["inputs"]["steps"] = 1
        for i in range(len(gpus)):
            wf["3"]["inputs"]["seed"] = 1000 + i  # no cache hit
            t = time.time()
            pid = req("POST", "/prompt", {"prompt": wf}, {"X-TARGET-GPU": str(i)})["prompt_id"]
            while True:
                h = req("GET", "/history/" + pid)
                if pid in h: break
                if time.time() - t > 300: raise SystemExit(f"prompt on GPU {i} did not finish")
                time.sleep(0.05)
            status = h[pid]["status"]["status_str"]
            time.sleep(0.5)
            rows.append({"gpus_loaded": i + 1, "status": status, "prompt_s": round(time.time() - t, 3), "rss": rss()})
        log.flush()
        text = open(os.path.join(work, "rss_server.log")).read()
        loads = [float(x) for x in re.findall(r"loaded \S+ on (?:cuda|cpu) \d+ in ([0-9.]+) s", text)]
        fills = re.findall(r"on (?:cuda|cpu) \d+ in [0-9.]+ s \(host copy: (filled|shared)", text)
        r1, rn = rows[0]["rss"], rows[-1]["rss"]
        growth = 100.0 * (rn - r1) / r1
        print(f"server ready after {ready_s:.2f} s; RSS before any model {base / 2**20:.0f} MiB")
        print("GPUs holding the model | RSS MiB | prompt s | status")
        for r in rows: print(f"{r['gpus_loaded']:>22} | {r['rss'] / 2**20:7.0f} | {r['prompt_s']:8.2f} | {r['status']}")
        print(f"model load times (s, GPU 0 first): {loads}; host copy: {fills}")
        print(f"RSS growth from 1 to {len(rows)} GPUs: {growth:+.2f}% (limit 5%)")
        res = {"checkpoint": name, "n_gpus": len(rows), "ready_s": ready_s, "rss_base": base, "rows": rows,
               "load_s": loads, "host_copy": fills, "rss_growth_pct": growth}
        if out: json.dump(res, open(out, "w"), indent=1)
        ok = all(r["status"] == "success" for r in rows) and growth <= 5.0
        ok = ok and fills[:1] == ["filled"] and all(f == "shared" for f in fills[1:]) and len(fills) == len(rows)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        srv.send_signal(signal.SIGINT)
        try: srv.wait(20)
        except subprocess.TimeoutExpired: srv.kill()

if __name__ == "__main__":
    sys.exit(main())
