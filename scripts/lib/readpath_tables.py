#!/usr/bin/env python3
"""Tables of scripts/bench-readpath.sh: reads results.jsonl (one JSON line per
`rstargz-bench read-path|resources` invocation, labelled native, rstargz or
go) and prints markdown tables with ratios; writes them to a file if asked.
usage: readpath_tables.py RESULTS [MARKDOWN_OUT]"""
import json
import sys

results = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
TARGETS = ["rstargz", "go"]
out = []


def emit(line=""):
    out.append(line)


def size(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


reads, walks = {}, {}
for r in results:
    for run in r.get("runs", []):
        if run["kind"] == "read":
            key = (run["state"], run["access"], run["block"])
            reads.setdefault(r["label"], {})[key] = run
        else:
            walks.setdefault(r["label"], {})["first" if run["cold"] else "second"] = run

emit("### Reads of a file (MB/s; ratio against native overlayfs on local disk, same run)")
emit()
emit("| state | access | block | native | rstargz | ratio | Go ref | ratio | rstargz / Go |")
emit("|---|---|---|---|---|---|---|---|---|")
keys = sorted({k for t in TARGETS for k in reads.get(t, {}) if k[0] != "reread"},
              key=lambda k: (["cold", "disk", "page"].index(k[0]), k[1], k[2]))
for state, access, block in keys:
    base_state = "page" if state == "page" else "cold"
    base = reads.get("native", {}).get((base_state, access, block), {}).get("mb_per_s")
    row = [state, access, size(block), f"{base:.0f}" if base else "—"]
    vals = []
    for t in TARGETS:
        v = reads.get(t, {}).get((state, access, block), {}).get("mb_per_s")
        vals.append(v)
        row += [f"{v:.1f}" if v is not None else "—", ratio(v, base)]
    row.append(ratio(vals[0], vals[1]))
    emit("| " + " | ".join(row) + " |")
emit()
emit("cold: fresh daemon, empty caches, page cache dropped (native: page cache dropped). "
     "disk: the daemon has read the whole file before, page cache dropped (native: same as cold). "
     "page: file in the page cache. Random runs read the same block-aligned offsets everywhere.")
emit()

if any(f"ctr-{t}" in reads for t in TARGETS):
    emit("### In a container through containerd: a cold read, then at once the re-read "
         "(MB/s; ratio against containerd's own overlayfs, same run)")
    emit()
    emit("| read | access | block | overlayfs | rstargz | ratio | Go ref | ratio | rstargz / Go |")
    emit("|---|---|---|---|---|---|---|---|---|")
    for key in sorted({k for t in ["overlayfs"] + TARGETS for k in reads.get(f"ctr-{t}", {})},
                      key=lambda k: (k[1], ["cold", "reread"].index(k[0]), k[2])):
        base = reads.get("ctr-overlayfs", {}).get(key, {}).get("mb_per_s")
        row = [key[0], key[1], size(key[2]), f"{base:.1f}" if base else "—"]
        vals = []
        for t in TARGETS:
            v = reads.get(f"ctr-{t}", {}).get(key, {}).get("mb_per_s")
            vals.append(v)
            row += [f"{v:.1f}" if v is not None else "—", ratio(v, base)]
        row.append(ratio(vals[0], vals[1]))
        emit("| " + " | ".join(row) + " |")
    emit()
    emit("Each daemon with its default config, fresh; the container's files read through "
         "/proc/PID/root of its process (containerd's overlay over the snapshotter's layers). "
         "reread: the second sequential read, started as soon as the cold one ended. "
         "cold rand: a fresh daemon, a new container, the page cache dropped, then random "
         "block-aligned reads, while the daemon's background fetch runs as configured by default.")
    emit()

emit("### Metadata: `find` + `lstat` of every entry (seconds; ratio against native)")
emit()
emit("| traversal | entries | native s | rstargz s | ratio | Go ref s | ratio |")
emit("|---|---|---|---|---|---|---|")
for which in ["first", "second"]:
    base = walks.get("native", {}).get(which, {})
    row = [which, str(base.get("entries", "—")), f"{base.get('seconds', 0):.3f}"]
    for t in TARGETS:
        w = walks.get(t, {}).get(which, {})
        s = w.get("seconds")
        row += [f"{s:.3f}" if s else "—", ratio(s, base.get("seconds"))]
    emit("| " + " | ".join(row) + " |")
emit()
emit("first: caches dropped (dentries, inodes, pages) after the mount; second: right after.")
emit()

emit("### Resources per mounted image (fresh daemon, images mounted one after another)")
emit()
emit("| image | entries | target | Prepare→AlreadyExists ms | RSS after mount | B/entry | CPU ms | RSS after walk | B/entry |")
emit("|---|---|---|---|---|---|---|---|---|")
res = {r["label"]: r for r in results if "images" in r}
images = [i["image"] for i in res.get("rstargz", res.get("go", {"images": []}))["images"]]
for idx, name in enumerate(images):
    for t in TARGETS:
        if t not in res or idx >= len(res[t]["images"]):
            continue
        i = res[t]["images"][idx]
        n = max(i["entries"], 1)
        walked = i["rss_mount_bytes"] + i["rss_walk_bytes"]
        emit(f"| {name.split('/')[-1]} | {i['entries']} | {t} | {i['prepare_ms']:.1f} | "
             f"{i['rss_mount_bytes'] / 1e6:+.1f} MB | {i['rss_mount_bytes'] / n:.0f} | "
             f"{i['cpu_mount_seconds'] * 1e3:.0f} | {walked / 1e6:+.1f} MB | {walked / n:.0f} |")
for t in TARGETS:
    if t not in res:
        continue
    emit(f"\n{t}: idle RSS {res[t]['rss_idle_bytes'] / 1e6:.1f} MB before the first mount.")
    # Per entry without the fixed cost of a mount: the slope between the
    # smallest and the largest tree layer.
    trees = sorted((i for i in res[t]["images"] if "/tree" in i["image"]), key=lambda i: i["entries"])
    if len(trees) >= 2 and trees[-1]["entries"] > trees[0]["entries"]:
        lo, hi = trees[0], trees[-1]
        n = hi["entries"] - lo["entries"]
        slope = (hi["rss_mount_bytes"] - lo["rss_mount_bytes"]) / n
        walked = (hi["rss_mount_bytes"] + hi["rss_walk_bytes"]
                  - lo["rss_mount_bytes"] - lo["rss_walk_bytes"]) / n
        cpu = (hi["cpu_mount_seconds"] - lo["cpu_mount_seconds"]) / n * 1e5
        emit(f"{t}: per entry beyond a mount's fixed cost (slope {lo['entries']} → {hi['entries']} "
             f"entries): {slope:.0f} B after mount, {walked:.0f} B after walk, "
             f"{cpu:.2f} CPU s per 100k entries to mount.")
emit()
emit("entries: names a walk of the mounted root sees (files, directories, the root); "
     "RSS after walk: growth from before the mount until after a full `find` + `lstat`.")

text = "\n".join(out) + "\n"
print(text)
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        f.write(text)
