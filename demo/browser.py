"""Drive the demo page in a real browser (Playwright + Debian's chromium).

Used by the browser test and ``scripts/demo_screenshot.py``; Playwright is a dev dependency.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# SwiftShader: WebGL on the CPU, so the 3D viewers draw (and show in screenshots) without a GPU.
CHROMIUM_ARGS = ("--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader")


def launch_browser(playwright, chromium: Path = CHROMIUM):
    """A headless chromium that renders WebGL on the CPU."""
    return playwright.chromium.launch(executable_path=str(chromium), args=list(CHROMIUM_ARGS))


def generate_in_page(page, url: str, rgb: Path, seg: Path, timeout_s: float = 180) -> None:
    """Open the demo, upload an image and its label map, segment, generate, and wait for the viewer."""
    from playwright.sync_api import expect

    page.goto(url)
    page.locator("#image-file input[type=file]").set_input_files(str(rgb))
    page.get_by_label("label map", exact=True).check()
    page.locator("#label-file input[type=file]").set_input_files(str(seg))
    page.locator("#segment").click()
    expect(page.locator("#overlay img")).to_be_visible(timeout=60_000)
    page.locator("#generate").click()
    expect(page.locator("#status")).to_contain_text("instances in", timeout=timeout_s * 1000)
    expect(page.locator("#viewer canvas")).to_be_visible(timeout=60_000)
