"""What the demo does, without Gradio: input checks, segmentation edits, generation, outputs.

Every function raises :class:`~midi3d.io.errors.InputError` with a one-line message for bad
input; the Gradio layer shows that message in the page.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.files import write_atomic
from ..io.images import load_rgb
from ..io.labelmap import instance_ids, read_label_map
from ..segmentation.base import overlay, relabel


@dataclass
class DemoLimits:
    """Upload and work limits of one demo server."""

    max_upload_mb: float = 15.0
    max_side: int = 2048          # longest image side, in pixels
    max_instances: int = 16
    queue_size: int = 8           # waiting generations beyond the running one


def check_upload(path: str | Path | None, what: str, limits: DemoLimits) -> Path:
    """The uploaded file's path, after the size check."""
    if path is None:
        raise InputError(f"no {what} uploaded")
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        raise InputError(f"{path.name}: empty or missing {what} file")
    if size > limits.max_upload_mb * 1024 * 1024:
        raise InputError(f"{path.name}: {what} of {size / 2**20:.1f} MB exceeds the {limits.max_upload_mb:g} MB limit")
    return path


def load_scene_image(path: str | Path | None, limits: DemoLimits) -> np.ndarray:
    """The scene image as RGB uint8, within the size limits."""
    path = check_upload(path, "image", limits)
    rgb = load_rgb(path)
    height, width = rgb.shape[:2]
    if max(height, width) > limits.max_side:
        raise InputError(f"{path.name}: image of {width}x{height} pixels exceeds the {limits.max_side}-pixel side limit")
    return rgb


def load_label_upload(path: str | Path | None, shape: tuple[int, int], limits: DemoLimits) -> np.ndarray:
    """A user's label map, checked against the image size and the instance cap."""
    path = check_upload(path, "label map", limits)
    labels = read_label_map(path, max_instances=limits.max_instances)
    if labels.shape != tuple(shape):
        raise InputError(f"{path.name}: label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                         f"{shape[1]}x{shape[0]}")
    if not instance_ids(labels):
        raise InputError(f"{path.name}: label map has no instance (all background)")
    return labels


def _check_present(labels: np.ndarray, ids: list[int]) -> None:
    absent = sorted(set(ids) - set(instance_ids(labels)))
    if absent:
        raise InputError(f"instance(s) {', '.join(map(str, absent))} not in the current label map "
                         f"(it has {', '.join(map(str, instance_ids(labels)))})")


def remove_instances(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Drop ``ids`` to background and renumber the rest 1..N."""
    _check_present(labels, ids)
    remaining = relabel(np.where(np.isin(labels, ids), 0, labels))
    if not instance_ids(remaining):
        raise InputError("removing every instance leaves nothing to generate")
    return remaining


def merge_instances(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Merge ``ids`` (at least two) into the first of them, then renumber."""
    if len(set(ids)) < 2:
        raise InputError("select at least two instances to merge")
    _check_present(labels, ids)
    return relabel(np.where(np.isin(labels, ids), min(ids), labels))


def preview(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return overlay(rgb, labels)


def scene_zip(result, alignment=None, variants: dict[str, bytes] | None = None) -> bytes:
    """A zip of one GLB per instance (``instance_<id>.glb``, textured when ``alignment`` is), all in
    the scene frame, plus the whole-scene ``variants`` (name → GLB bytes)."""
    from ..pipelines.scene import build_scene

    meshes = alignment.meshes if alignment is not None else result.meshes
    textured = alignment is not None and alignment.textured
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for instance_id, mesh in zip(result.ids, meshes):
            if mesh is None or len(mesh.faces) == 0:
                continue
            archive.writestr(f"instance_{instance_id}.glb",
                             build_scene([instance_id], [mesh], keep_visuals=textured).export(file_type="glb"))
        for name, data in (variants or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def viewer_camera(alignment, meshes) -> tuple[float, float, float] | None:
    """Gradio ``Model3D.camera_position`` (alpha, beta in degrees, radius) putting its orbit camera
    at the estimated eye, looking at the scene's bounding-box centre (the viewer's target). The
    viewer loads glTF into a left-handed frame (z flipped) and keeps y up, so roll is not shown."""
    present = [m for m in meshes if m is not None and len(m.faces)]
    if alignment is None or not present:
        return None
    bounds = np.concatenate([m.bounds for m in present])
    offset = alignment.camera.eye - (bounds.min(0) + bounds.max(0)) / 2
    x, y, z = offset[0], offset[1], -offset[2]
    radius = float(np.linalg.norm(offset))
    if radius < 1e-9:
        return None
    return (float(np.degrees(np.arctan2(z, x))), float(np.degrees(np.arccos(np.clip(y / radius, -1, 1)))), radius)


@dataclass
class SessionFolders:
    """Per-session output folders under one root; a session keeps its ``keep`` latest results
    (a result reported to the client stays downloadable while the session's next one runs)."""

    root: Path
    keep: int = 3
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    @classmethod
    def create(cls, root: str | Path | None = None) -> SessionFolders:
        base = Path(root) if root is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(prefix="midi3d-demo-", dir=base)))

    def fresh(self, session: str) -> Path:
        """An empty folder for ``session``'s next result; results older than its ``keep`` latest
        are removed."""
        safe = "".join(c for c in session if c.isalnum() or c in "-_")[:64] or "anonymous"
        with self._lock:
            self._counter += 1
            base = self.root / safe
            folder = base / f"{self._counter:08d}"
            folder.mkdir(parents=True)
            for old in sorted(base.iterdir())[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            return folder

    def expire(self, older_than_s: float) -> int:
        """Remove results older than ``older_than_s``, except each session's newest (what its page
        shows); returns how many were removed."""
        removed, now = 0, time.time()
        with self._lock:
            for base in [p for p in self.root.iterdir() if p.is_dir()]:
                for old in sorted(base.iterdir())[:-1]:
                    try:
                        if now - old.stat().st_mtime > older_than_s:
                            shutil.rmtree(old, ignore_errors=True)
                            removed += 1
                    except OSError:
                        continue
        return removed

    def release(self, session: str) -> None:
        safe = "".join(c for c in session if c.isalnum() or c in "-_")[:64] or "anonymous"
        shutil.rmtree(self.root / safe, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_empty_uploads(folder: Path, older_than_s: float) -> int:
    """Remove the zero-byte ``tmp*`` files older than ``older_than_s`` at the top of Gradio's upload
    folder: Gradio (6.x) leaves one per uploaded file and its ``delete_cache`` never removes them.
    Returns how many were removed."""
    removed, now = 0, time.time()
    for path in Path(folder).glob("tmp*"):
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_size == 0 and now - info.st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def expire_tracked_files(file_sets: list[set[str]], keep: set[str], older_than_s: float) -> int:
    """Remove the files of ``file_sets`` (Gradio's ``temp_file_sets``) changed more than ``older_than_s``
    ago, except those in ``keep``, and drop them from their set. Returns how many were removed.

    Gradio 6's own ``delete_cache`` task iterates those sets while uploads add to them; the first
    clash ends it with "Set changed size during iteration" and no upload is removed after that
    (measured: the uploads of rejected requests stayed in the cache). Each set is copied here first.
    """
    removed, now = 0, time.time()
    for file_set in file_sets:
        for name in list(file_set):  # list() of a set of str holds the GIL: a consistent copy
            if name in keep:
                continue
            path = Path(name)
            try:
                if now - path.lstat().st_ctime <= older_than_s:
                    continue
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # removed already: only forget it
            except OSError:  # not ours to remove: leave it tracked
                continue
            file_set.discard(name)
    return removed


@dataclass
class DemoResult:
    """What one demo generation wrote and shows."""

    scene: Path  # the GLB the viewer shows (textured when texturing worked)
    download: Path  # zip: textured and untextured scene GLBs and one GLB per object
    overlay: Path | None  # photo | rendered instances | blend (None without a camera)
    camera_position: tuple[float, float, float] | None
    summary: str


def generate_outputs(pipe, rgb: np.ndarray, labels: np.ndarray, options, folder: Path) -> DemoResult:
    """Generate the scene, line it up with the photo and texture it (instance colours when that
    fails); write ``scene.glb``, ``overlay.png`` and ``scene.zip`` in ``folder``.

    The caller serialises calls (one generation at a time per worker)."""
    from ..io.images import write_png
    from ..pipelines.batch import AlignOptions, align_output
    from ..pipelines.scene import SceneInputs, build_scene, export_scene, generate_scene

    ids = instance_ids(labels)
    if not ids:
        raise InputError("no instance to generate: segment the image or upload a label map first")
    if rgb.shape[:2] != labels.shape:
        raise InputError("the label map does not match the image; segment again")
    scene = SceneInputs(rgb, labels, "demo")
    result = generate_scene(pipe, scene, options)
    if len(result.empty_ids) == len(result.ids):
        raise InputError("no instance produced a surface; try another seed or more steps")
    alignment = align_output(scene, result, AlignOptions(texture="project"), folder / "scene.glb")
    scene_path = export_scene(result, folder / "scene.glb", alignment)
    plain = build_scene(result.instance_ids, result.meshes,
                        camera=None if alignment is None else alignment.camera).export(file_type="glb")
    variants = {"scene_untextured.glb": plain}
    overlay_path = None
    if alignment is not None:
        variants["scene_textured.glb" if alignment.textured else "scene_aligned.glb"] = scene_path.read_bytes()
        overlay_path = write_png(folder / "overlay.png", alignment.overlay(rgb))
    zip_path = folder / "scene.zip"
    write_atomic(zip_path, scene_zip(result, alignment, variants))
    t = result.timings
    summary = (f"{len(result.ids) - len(result.empty_ids)}/{len(result.ids)} instances in "
               f"{sum(t.values()):.1f}s (encode {t.get('encode', 0):.1f}s, denoise {t.get('denoise', 0):.1f}s, "
               f"decode {t.get('decode', 0):.1f}s")
    if alignment is not None:
        summary += (f", camera {t.get('camera', 0):.1f}s, texture {t.get('texture', 0):.1f}s); "
                    f"reprojection IoU {alignment.mean_iou:.2f}, {alignment.texture_mode} colours")
    else:
        summary += "); no camera could be estimated: instance colours"
    if result.empty_ids:
        summary += f"; no surface for {', '.join(map(str, result.empty_ids))}"
    if result.fallback_levels:
        summary += f"; meshed at a dilated level: {', '.join(map(str, result.fallback_levels))}"
    camera_position = viewer_camera(alignment, alignment.meshes if alignment is not None else result.meshes)
    return DemoResult(scene_path, zip_path, overlay_path, camera_position, summary)
