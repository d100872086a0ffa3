"""Screenshot of the demo after one generation at its default settings (the README's picture).

Serves the demo in this process with the embedded model (or ``--model``), drives Debian's
chromium through Playwright (upload, label map, segment, generate) and writes a full-page PNG.

    python scripts/demo_screenshot.py docs/images/demo.png [--example room-5]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_drawn_viewer(tab, timeout_s: float) -> None:
    """Wait until the 3D viewer's canvas shows the scene and stops changing (software WebGL on a
    loaded machine can take many seconds after the GLB arrives); still blank or moving after
    ``timeout_s`` is an error."""
    import io
    import time

    import numpy as np
    from PIL import Image

    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        for canvas in tab.locator("canvas").all():
            if not canvas.is_visible():
                continue
            pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), np.float32)
            if pixels.std() <= 5.0:  # a background alone is uniform
                continue
            if last is not None and last.shape == pixels.shape and np.abs(last - pixels).max() < 1.0:
                return  # drawn, and the same frame twice: the camera has settled
            last = pixels
            break
        tab.wait_for_timeout(1000)
    raise SystemExit(f"the 3D viewer was still blank or moving after {timeout_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--example", default="room-5", help="bundled example (NAME_rgb.png + NAME_seg.png)")
    parser.add_argument("--model", type=Path, default=None, help="pipeline folder (default: embedded)")
    parser.add_argument("--chromium", type=Path, default=None, help="default: Debian's /usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from midi3d.demo.app import DemoConfig, launch
    from midi3d.demo.browser import CHROMIUM, generate_in_page, launch_browser
    from midi3d.demo.session import DemoLimits
    from midi3d.io.files import write_atomic

    rgb, seg = EXAMPLES / f"{args.example}_rgb.png", EXAMPLES / f"{args.example}_seg.png"
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        page = launch(DemoConfig(DemoLimits(), model=args.model, work_dir=Path(work)), host="127.0.0.1", port=port,
                      prevent_thread_lock=True)
        try:
            with sync_playwright() as playwright:
                browser = launch_browser(playwright, args.chromium or CHROMIUM)
                tab = browser.new_page(viewport={"width": args.width, "height": 1300})
                generate_in_page(tab, f"http://127.0.0.1:{port}/", rgb, seg, timeout_s=300)
                wait_for_drawn_viewer(tab, timeout_s=90)
                png = tab.screenshot(full_page=True)
                browser.close()
        finally:
            page.close()
    write_atomic(args.out, png)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
