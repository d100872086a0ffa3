"""The demo under load: a server started with ``midi3d demo`` on 127.0.0.1 (its own process, its own
Gradio cache), several gradio_client clients sending tens of requests at once, a bounded run.

Every request is answered with the client's own result or rejected with a queue-full message; the
server's memory and temporary files are flat afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import TEST_SPEC

EXAMPLES = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"
CLIENTS, REQUESTS, QUEUE, TTL = 6, 5, 2, 20  # TTL above the longest wait: 1 running + 2 queued generations (with camera and texture)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture()
def demo_server(tmp_path):
    from midi3d.models.factory import PipelineSpec, build_pipeline

    model = tmp_path / "model"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(model)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = tmp_path / "gradio-cache"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "-m", "midi3d", "demo", "--port", str(port), "--model", str(model),
                                "--queue-size", str(QUEUE), "--resolution", "32", "--cache-ttl", str(TTL), "-q"],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"demo did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "pid": process.pid, "cache": cache}
    process.terminate()
    process.wait(timeout=30)


def test_concurrent_clients_are_answered_or_told_the_queue_is_full(demo_server, tmp_path):
    from gradio_client import Client, handle_file

    rgb, seg = EXAMPLES / "blocks-5_rgb.png", EXAMPLES / "blocks-5_seg.png"
    labels = np.asarray(Image.open(seg))
    clients = []
    for k in range(CLIENTS):  # client k keeps instances 1..(k % 5 + 1): its results are recognisable
        path = tmp_path / f"labels-{k}.png"
        Image.fromarray(np.where(labels <= k % 5 + 1, labels, 0).astype(np.uint8)).save(path)
        client = Client(demo_server["url"], verbose=False)
        label_file = client.predict(handle_file(str(rgb)), "label map", handle_file(str(path)), "", "",
                                    api_name="/segment")[0]
        clients.append((client, label_file, k % 5 + 1))

    def request(k: int, seed: int):
        client, label_file, _ = clients[k]
        return client.predict(handle_file(str(rgb)), handle_file(label_file), 2, 3.0, seed, "default",
                              "default", api_name="/generate")

    for k in range(CLIENTS):  # warm-up: one result per session, so that the baseline holds them
        request(k, 0)
    time.sleep(TTL * 1.6)
    files_before, rss_before = _files(demo_server["cache"]), _rss_mib(demo_server["pid"])

    outcomes: dict[tuple[int, int], object] = {}

    def client_loop(k: int) -> None:
        for r in range(REQUESTS):
            try:
                scene = trimesh.load(request(k, 1 + r)[1], force="scene")
                outcomes[k, r] = len([n for n in scene.graph.nodes_geometry if n.startswith("instance_")])
            except Exception as err:  # gradio_client raises on a rejected or failed job
                outcomes[k, r] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.perf_counter() - start
    assert len(outcomes) == CLIENTS * REQUESTS  # every request came back
    answered = [key for key, value in outcomes.items() if value == clients[key[0]][2]]
    rejected = [key for key, value in outcomes.items() if isinstance(value, str) and "queue is full" in value.lower()]
    wrong = {key: value for key, value in outcomes.items() if key not in answered and key not in rejected}
    assert not wrong, wrong  # none mixed up, none failed otherwise
    assert answered  # the load did not starve everyone

    # the clean-up runs every TTL/2 and removes files older than TTL: all gone within 1.5 TTL, 3 TTL allowed
    deadline = time.time() + TTL * 3
    while len(_files(demo_server["cache"])) > len(files_before) and time.time() < deadline:
        time.sleep(0.5)
    files_after, rss_after = _files(demo_server["cache"]), _rss_mib(demo_server["pid"])
    print(f"{CLIENTS} clients x {REQUESTS} requests in {seconds:.1f}s: {len(answered)} answered, {len(rejected)} "
          f"rejected (queue full); cache files {len(files_before)} -> {len(files_after)}; RSS {rss_before:.0f} -> "
          f"{rss_after:.0f} MiB")
    assert len(files_after) <= len(files_before), sorted(set(files_after) - set(files_before))
    assert rss_after <= rss_before * 1.15
