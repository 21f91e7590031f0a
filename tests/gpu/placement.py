#!/usr/bin/env python3
"""tests/gpu/placement.py -- issue 7 on a machine with 2 or more GPUs (by hand, not part of ctest).

Starts `kiln serve --disable-metadata` on every GPU with a full-size SD 1.5 checkpoint (random
weights, `kiln ckpt --sd15`), then runs the same txt2img (512x512, 20 steps, euler, fixed seed) on
GPU 0 three times: CheckpointLoaderSimple (whole model on GPU 0), CheckpointLoaderPlaced with part
of the UNet on GPU 1 and the rest in host memory, with prefetch, and the same without prefetch.
Checks that the three PNGs are byte-identical (no metadata: same pixels, same bytes), that
/system_stats shows the placed model's bytes on cuda:0, cuda:1 and cpu, and that the log names
where the blocks live. Prints the sampling time of each run (history timestamps) and writes them
as JSON. Exits 1 on any failure.

usage: placement.py KILN_BINARY WORK_DIR [--placement ALLOC] [--json OUT] [--steps N]
"""
import argparse, http.client, json, os, shutil, signal, subprocess, sys, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("kiln"); ap.add_argument("work")
ap.add_argument("--placement", default="cuda:0,700mb;cuda:1,600mb;cpu,*")
ap.add_argument("--json"); ap.add_argument("--steps", type=int, default=20); ap.add_argument("--port", type=int, default=8391)
a = ap.parse_args()
fails = []
def fail(msg): print("FAIL:", msg); fails.append(msg)

os.makedirs(a.work + "/models/checkpoints", exist_ok=True)
ck = a.work + "/models/checkpoints/sd15.safetensors"
if not os.path.exists(ck):
    subprocess.run([a.kiln, "ckpt", "--sd15", ck], check=True)
if not os.path.exists(a.work + "/models/checkpoints/vocab.json"):  # the tiny one writes the test tokenizer beside it
    subprocess.run([a.kiln, "ckpt", "--tiny", a.work + "/models/checkpoints/tiny.safetensors"], check=True)
out_dir = a.work + "/output"; shutil.rmtree(out_dir, ignore_errors=True)
log = open(a.work + "/server.log", "w")
srv = subprocess.Popen([a.kiln, "serve", "--port", str(a.port), "--models-dir", a.work + "/models", "--output-directory",
                        out_dir, "--disable-metadata", "--db", ""], stdout=log, stderr=subprocess.STDOUT)
URL = f"http://127.0.0.1:{a.port}"
def get(path):
    with urllib.request.urlopen(URL + path, timeout=30) as r: return json.load(r)
for _ in range(600):
    try: get("/queue"); break
    except Exception: time.sleep(0.1)

def wf(loader, prefix, seed):
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": a.steps, "cfg": 8.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
              "latent_image": ["5", 0]}},
        "4": loader,
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a kiln by a river", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}}}

def run(name, loader, seed=1234):
    body = json.dumps({"prompt": wf(loader, name, seed)}).encode()
    req = urllib.request.Request(URL + "/prompt", body, {"Content-Type": "application/json", "X-TARGET-GPU": "0"})
    pid = json.load(urllib.request.urlopen(req, timeout=30))["prompt_id"]
    for _ in range(6000):
        h = get("/history/" + pid)
        if pid in h: break
        time.sleep(0.1)
    h = h.get(pid, {}); st = h.get("status", {})
    if st.get("status_str") != "success": fail(f"{name}: {json.dumps(st)[:800]}"); return None, None
    ts = {m[0]: m[1].get("timestamp") for m in st.get("messages", [])}
    secs = (ts["execution_success"] - ts["execution_start"]) / 1000.0 if "execution_success" in ts else None
    img = h["outputs"]["9"]["images"][0]["filename"]
    return open(os.path.join(out_dir, img), "rb").read(), secs

simple = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}}
placed = lambda pf: {"class_type": "CheckpointLoaderPlaced", "inputs": {"ckpt_name": "sd15.safetensors",
                     "weights_placement": a.placement, "prefetch": pf}}
res = {}
for name, loader in [("resident", simple), ("prefetch", placed(True)), ("noprefetch", placed(False))]:
    run(name + "_warm", loader, seed=99)  # loads and captures (another seed: not cached); then steady state
    png, secs = run(name, loader)
    res[name] = {"png": png, "s": secs}
    print(f"{name:10s} {secs} s for {a.steps} steps (whole prompt, model loaded; text encodings and latent cached)")
ref = res["resident"]["png"]
for k in ("prefetch", "noprefetch"):
    if res[k]["png"] is None or ref is None: continue
    if res[k]["png"] != ref: fail(f"{k}: image differs from the resident model's")
    else: print(f"ok: {k} image identical to the resident one ({len(ref)} bytes)")
stats = get("/system_stats")
where = [m for d in stats["devices"] for m in d.get("models", [])]
print("system_stats models:", json.dumps(where))
w = " ".join(m["where"] for m in where if m["placement"] != "auto")
for dev in [e.split(",")[0].strip().lower() for e in a.placement.split(";") if e.strip()]:  # each device named
    if dev not in w: fail(f"/system_stats: the placed model shows nothing on {dev}: {w}")
srv.send_signal(signal.SIGINT)
try: srv.wait(60)
except subprocess.TimeoutExpired: srv.kill(); fail("server did not stop")
log.close()
text = open(a.work + "/server.log").read()
placed_lines = [l for l in text.splitlines() if "placed (as asked)" in l]
print("\n".join(placed_lines[:2]))
if not placed_lines: fail("no 'placed' line in the log")
if a.json:
    json.dump({k: v["s"] for k, v in res.items()} | {"placement": a.placement, "steps": a.steps, "where": where,
              "log": placed_lines[:1]}, open(a.json, "w"), indent=1)
print(f"{len(fails)} failed" if fails else "placement: all passed")
sys.exit(1 if fails else 0)
