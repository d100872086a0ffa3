"""Demo under load: sequential generations (temporary files, memory) and concurrent clients.

Starts the demo on 127.0.0.1 with the embedded model (or --model), then through gradio_client:
  1. N sequential generations from one client: files under the demo's work folder and Gradio's
     cache, and the server process's RSS, after the first and after the last;
  2. C clients at once, each with its own label map: every client must get back a GLB with its
     own instance count (no mixed-up results); queue-full rejections are counted.

    python benchmarks/bench_demo.py [--runs 20] [--clients 4] [--steps 10] [--resolution 128]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def count_files(*roots: Path) -> int:
    return sum(1 for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    import trimesh
    from gradio_client import Client, handle_file

    from midi3d.demo.app import DemoConfig, launch
    from midi3d.demo.session import DemoLimits

    examples = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"
    rgb, seg = examples / "blocks-5_rgb.png", examples / "blocks-5_seg.png"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gradio_cache = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
    page = launch(DemoConfig(DemoLimits(queue_size=args.clients), model=args.model, resolution=args.resolution),
                  port=port, prevent_thread_lock=True)
    url, work = f"http://127.0.0.1:{port}/", page.backend.folders.root

    def generate(client, label_map: Path, seed: int):
        label_file = client.predict(handle_file(str(rgb)), "label map", handle_file(str(label_map)), "", "",
                                    api_name="/segment")[0]
        return client.predict(handle_file(str(rgb)), handle_file(label_file), args.steps, 7.0, seed, "default",
                              api_name="/generate")

    try:
        client = Client(url, verbose=False)
        generate(client, seg, 0)
        files_first, rss_first = count_files(work), rss_mib()
        cache_first = count_files(gradio_cache)
        start = time.perf_counter()
        for seed in range(1, args.runs):
            generate(client, seg, seed)
        seconds = time.perf_counter() - start
        files_last, rss_last, cache_last = count_files(work), rss_mib(), count_files(gradio_cache)
        print(f"{args.runs} sequential generations ({seconds / max(1, args.runs - 1):.1f}s each):")
        print(f"  demo work files   after 1st: {files_first:4d}   after {args.runs}th: {files_last:4d}")
        print(f"  gradio cache files after 1st: {cache_first:4d}   after {args.runs}th: {cache_last:4d} "
              f"(uploads and overlays; delete_cache ages them out after 4 min)")
        print(f"  server RSS        after 1st: {rss_first:7.1f} MiB   after {args.runs}th: {rss_last:7.1f} MiB "
              f"(ratio {rss_last / rss_first:.3f})")

        labels = np.asarray(Image.open(seg))
        maps, results = [], {}
        folder = Path(tempfile.mkdtemp(prefix="bench-demo-"))
        for k in range(args.clients):
            keep = 1 + k % 5  # client k labels instances 1..keep
            path = folder / f"client{k}.png"
            Image.fromarray(np.where(labels <= keep, labels, 0).astype(np.uint8)).save(path)
            maps.append((path, keep))

        def run(k: int) -> None:
            try:
                out = generate(Client(url, verbose=False), maps[k][0], k)
                scene = trimesh.load(out[1], force="scene")
                results[k] = len([n for n in scene.graph.nodes_geometry if n.startswith("instance_")])
            except Exception as err:
                results[k] = f"{type(err).__name__}: {err}"

        threads = [threading.Thread(target=run, args=(k,)) for k in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ok = sum(1 for k in range(args.clients) if results[k] == maps[k][1])
        rejected = sum(1 for r in results.values() if isinstance(r, str) and "queue" in r.lower())
        print(f"{args.clients} concurrent clients in {time.perf_counter() - start:.1f}s: {ok} got their own "
              f"instance count, {rejected} rejected (queue full), "
              f"{args.clients - ok - rejected} wrong or failed {[results[k] for k in range(args.clients)]}")
    finally:
        page.close()


if __name__ == "__main__":
    main()
