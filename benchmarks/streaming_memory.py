"""Memory that does not grow with the data set: a search over a generated image folder of 100,000
images at 224 px, its peak resident memory against what the images would take held in memory.

The images are generated (smooth colour gradients with a class-dependent tint, JPEG): this
measures memory, not accuracy. The search runs as a user runs it, `autocompress search` in a
subprocess, with a small model and few steps so that it finishes in minutes; its peak is the
largest proportional set size (PSS) of its process and every process below it (the data loader's
workers), summed, sampled every 0.2 s. Writes results/streaming_memory.{md,json}.

    python benchmarks/streaming_memory.py [--images 100000] [--size 224] [--work runs/streaming]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def generate(folder: Path, count: int, size: int) -> float:
    """``count`` JPEG images in ``folder/<class>/``, made once (a folder with all of them is kept)."""
    from PIL import Image

    done = folder / "complete.json"
    if done.is_file() and json.loads(done.read_text()) == {"count": count, "size": size}:
        return 0.0
    started = time.monotonic()
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for c in range(CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % CLASSES
        tint = np.array([(c * 37) % 255, (c * 91) % 255, (c * 53) % 255], dtype=np.float32) / 255
        angle = rng.uniform(0, np.pi)
        field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        pixels = (255 * np.clip(0.5 * field[..., None] + 0.5 * tint, 0, 1)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"class{c}" / f"{i}.jpg", quality=80)
    done.write_text(json.dumps({"count": count, "size": size}))
    return time.monotonic() - started


def _tree_memory(root: int) -> dict[int, int]:
    """The proportional set size (PSS) of ``root`` and of every process below it, by process id: a
    page shared by several (a forked loader worker shares most of its parent's) counts once in
    all, where summed resident sizes would count it in each."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(next((line.split()[1] for line in status.splitlines()
                                            if line.startswith("PPid:")), "0"))
    below, changed = {root}, True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in below and pid not in below:
                below.add(pid)
                changed = True
    sizes = {}
    for pid in below:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        sizes[pid] = next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return sizes


def run_search(command: list[str], log: Path) -> tuple[int, int, float, str, dict]:
    """(exit code, peak memory of its process tree (PSS), seconds, the output's tail, where the
    peak was: seconds into the run, the search's own PSS and each other process's)."""
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        peak, at_peak = 0, {}
        while process.poll() is None:
            sizes = _tree_memory(process.pid)
            if sum(sizes.values()) > peak:
                peak = sum(sizes.values())
                at_peak = {"seconds": round(time.monotonic() - started, 1), "search_bytes": sizes.get(process.pid, 0),
                           "other_processes_bytes": sorted((b for p, b in sizes.items() if p != process.pid),
                                                           reverse=True)}
            time.sleep(0.2)
    return process.returncode, peak, time.monotonic() - started, log.read_text()[-3000:], at_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--work", type=Path, default=Path("runs/streaming"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    folder = args.work / f"images_{args.images}_{args.size}"
    generated_s = generate(folder, args.images, args.size)
    search = args.work / "search"
    command = [sys.executable, "-m", "autocompress.cli", "search", args.model, "--dataset", f"imagefolder:{folder}",
               "--input-size", str(args.size), "--budget", "0.7x", "--trials", "3", "--train-steps", "20",
               "--finetune-steps", "10", "--out", str(search), "--quiet", "--calibrate-model", "off",
               "--measure-near-budget", "0", "--space", "none"]  # no cells: their distillation at 224 px takes long
    code, peak, seconds, tail, at_peak = run_search(command, args.work / "search.log")
    in_memory = args.images * 3 * args.size * args.size * 4  # float32 at the training size, as before streaming
    disk = sum(f.stat().st_size for f in folder.rglob("*.jpg"))
    recorded = json.loads((search / "search.json").read_text()) if code == 0 else {}
    report = {
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": platform.processor() or platform.machine(), "cpu": _cpu(), "images": args.images,
        "size": args.size, "model": args.model, "command": " ".join(command[3:]), "exit_code": code,
        "peak_pss_bytes": peak, "at_peak": at_peak, "in_memory_bytes": in_memory, "files_bytes": disk, "seconds": round(seconds, 1),
        "generated_s": round(generated_s, 1), "data": recorded.get("data"), "tail": tail if code else "",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    gib = 2 ** 30
    lines = [
        "# Streaming: memory against the data set's size",
        "",
        f"Commit {report['commit']}, {report['cpu']}; `python benchmarks/streaming_memory.py --images {args.images} "
        f"--size {args.size}`.",
        "",
        f"A generated image folder of {args.images:,} JPEG images at {args.size} px ({disk / gib:.2f} GiB of files; "
        f"splits {recorded.get('data')}), searched by `autocompress {report['command']}`: exit code {code}, "
        f"{seconds / 60:.1f} minutes.",
        "",
        "| | GiB |",
        "|---|---|",
        f"| peak memory of the search: its process and the loader's workers, PSS summed | {peak / gib:.2f} |",
        f"| of which the search's own process, at the peak ({at_peak.get('seconds', 0):.0f} s in) | "
        f"{at_peak.get('search_bytes', 0) / gib:.2f} |",
        f"| of which the other processes (loader workers), at the peak | "
        f"{', '.join(f'{b / gib:.2f}' for b in at_peak.get('other_processes_bytes', [])) or '-'} |",
        f"| the images held as float32 tensors at {args.size} px, as data sets were held before | "
        f"{in_memory / gib:.1f} |",
        "",
    ]
    (args.out / "streaming_memory.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if code:
        print(tail, file=sys.stderr)
        sys.exit(code)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
