"""Texture-stage decimation: Open3D's quadric decimation (before) vs fast-simplification (now).

Both reduce the same meshes to the textured copy's face budget (``TextureOptions.max_faces``)
side by side in one run; prints each one's wall time, the ratio and the surface error of the
result (symmetric mean nearest-point distance between 20k surface samples of the original and
of the decimated mesh, relative to the mesh's largest extent). The meshes: the instances of a
GLB scene (e.g. ``midi3d generate … --texture none``), or by default the analytic scene of
``bench_extraction.py`` meshed at 128³, split into its connected pieces.

    .venv/bin/python benchmarks/bench_decimation.py [SCENE.glb] [--faces 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from midi3d.texture.bake import decimated


def open3d_decimated(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    import open3d as o3d

    legacy = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices, np.float64)),
                                       o3d.utility.Vector3iVector(np.asarray(mesh.faces, np.int32)))
    legacy = legacy.simplify_quadric_decimation(int(max_faces))
    return trimesh.Trimesh(np.asarray(legacy.vertices), np.asarray(legacy.triangles), process=True)


def surface_error(original: trimesh.Trimesh, reduced: trimesh.Trimesh) -> float:
    a, _ = trimesh.sample.sample_surface(original, 20000, seed=0)
    b, _ = trimesh.sample.sample_surface(reduced, 20000, seed=0)
    both = (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2
    return float(both / original.extents.max())


def test_meshes(scene: Path | None) -> list[trimesh.Trimesh]:
    if scene is not None:
        loaded = trimesh.load(scene, force="scene")
        return [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
    from bench_extraction import scene_sdf

    from midi3d.geometry import extract_dense

    mesh, _ = extract_dense(scene_sdf, resolution=128)
    return [piece for piece in mesh.split(only_watertight=False) if len(piece.faces) > 4000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, nargs="?")
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    meshes = test_meshes(args.scene)
    print(f"{len(meshes)} meshes, {sum(len(m.faces) for m in meshes):,} faces -> {args.faces} faces each "
          f"(best of {args.repeats})")
    rows = {}
    for name, fn in (("open3d (before)", open3d_decimated), ("fast-simplification", decimated)):
        best, reduced = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            reduced = [fn(m, args.faces) for m in meshes]
            best = min(best, time.perf_counter() - start)
        error = float(np.mean([surface_error(m, r) for m, r in zip(meshes, reduced)]))
        rows[name] = best
        print(f"{name:22}{best:8.2f} s   relative surface error {error:.5f}   "
              f"faces {max(len(r.faces) for r in reduced)} max")
    print(f"time ratio {rows['open3d (before)'] / rows['fast-simplification']:.1f}x")


if __name__ == "__main__":
    main()
