"""Procedural furniture from primitives, with random proportions.

Every builder returns a watertight-ish ``trimesh.Trimesh`` in a local frame: y up, resting on
y = 0, centred on x = z = 0. Sizes are in metres.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh

Builder = Callable[[np.random.Generator], trimesh.Trimesh]


def _box(size, centre) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=size)
    mesh.apply_translation(centre)
    return mesh


def _cylinder(radius, height, centre, sections: int = 24) -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z-up → y-up
    mesh.apply_translation(centre)
    return mesh


def _legs(width, depth, height, thickness) -> list[trimesh.Trimesh]:
    dx, dz = width / 2 - thickness, depth / 2 - thickness
    return [_box([thickness, height, thickness], [sx * dx, height / 2, sz * dz]) for sx in (-1, 1) for sz in (-1, 1)]


def _merge(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    return trimesh.util.concatenate(parts)


def table(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, h, top = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.65, 0.8), rng.uniform(0.03, 0.06)
    return _merge([_box([w, top, d], [0, h - top / 2, 0]), *_legs(w, d, h - top, rng.uniform(0.04, 0.08))])


def chair(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, seat_h = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55), rng.uniform(0.42, 0.5)
    back_h, t = rng.uniform(0.35, 0.55), rng.uniform(0.04, 0.07)
    seat = _box([w, t, d], [0, seat_h - t / 2, 0])
    back = _box([w, back_h, t], [0, seat_h + back_h / 2, -d / 2 + t / 2])
    return _merge([seat, back, *_legs(w, d, seat_h - t, rng.uniform(0.03, 0.05))])


def bed(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.2), rng.uniform(0.35, 0.55)
    head_h = rng.uniform(0.4, 0.8)
    base = _box([w, h, d], [0, h / 2, 0])
    head = _box([w, h + head_h, 0.08], [0, (h + head_h) / 2, -d / 2 - 0.04])
    pillow = _box([w * 0.7, 0.12, 0.35], [0, h + 0.06, -d / 2 + 0.25])
    return _merge([base, head, pillow])


def sofa(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, seat_h = rng.uniform(1.4, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.38, 0.48)
    back_h, arm = rng.uniform(0.35, 0.5), rng.uniform(0.12, 0.22)
    base = _box([w, seat_h, d], [0, seat_h / 2, 0])
    back = _box([w, back_h, 0.2], [0, seat_h + back_h / 2, -d / 2 + 0.1])
    arms = [_box([arm, seat_h + 0.2, d], [sx * (w / 2 + arm / 2), (seat_h + 0.2) / 2, 0]) for sx in (-1, 1)]
    return _merge([base, back, *arms])


def shelf(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, h, t = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.0, 2.0), 0.03
    count = int(rng.integers(3, 6))
    sides = [_box([t, h, d], [sx * (w / 2 - t / 2), h / 2, 0]) for sx in (-1, 1)]
    boards = [_box([w - 2 * t, t, d], [0, t / 2 + i * (h - t) / (count - 1), 0]) for i in range(count)]
    return _merge([*sides, *boards, _box([w, h, t], [0, h / 2, -d / 2 + t / 2])])


def cabinet(rng: np.random.Generator) -> trimesh.Trimesh:
    w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.5, 1.0)
    body = _box([w, h, d], [0, h / 2, 0])
    handle = _box([w * 0.3, 0.03, 0.03], [0, h * 0.8, d / 2 + 0.015])
    return _merge([body, handle])


def lamp(rng: np.random.Generator) -> trimesh.Trimesh:
    h, base_r, shade_r = rng.uniform(0.4, 0.7), rng.uniform(0.08, 0.14), rng.uniform(0.12, 0.2)
    base = _cylinder(base_r, 0.03, [0, 0.015, 0])
    pole = _cylinder(0.015, h, [0, h / 2, 0], sections=12)
    shade = trimesh.creation.cone(radius=shade_r, height=shade_r * 1.2, sections=24)
    shade.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    shade.apply_translation([0, h - shade_r * 0.4, 0])
    return _merge([base, pole, shade])


def stool(rng: np.random.Generator) -> trimesh.Trimesh:
    r, h = rng.uniform(0.15, 0.22), rng.uniform(0.4, 0.65)
    seat = _cylinder(r, 0.05, [0, h - 0.025, 0])
    return _merge([seat, *_legs(r * 1.3, r * 1.3, h - 0.05, 0.03)])


def plant(rng: np.random.Generator) -> trimesh.Trimesh:
    pot_r, pot_h, leaves = rng.uniform(0.08, 0.15), rng.uniform(0.12, 0.25), rng.uniform(0.15, 0.3)
    pot = _cylinder(pot_r, pot_h, [0, pot_h / 2, 0])
    foliage = trimesh.creation.icosphere(subdivisions=2, radius=leaves)
    foliage.apply_scale([1.0, rng.uniform(1.0, 1.6), 1.0])
    foliage.apply_translation([0, pot_h + leaves * 0.9, 0])
    return _merge([pot, foliage])


FLOOR_FURNITURE: dict[str, Builder] = {"table": table, "chair": chair, "bed": bed, "sofa": sofa, "shelf": shelf,
                                       "cabinet": cabinet, "stool": stool, "plant": plant, "lamp": lamp}
SMALL_FURNITURE: dict[str, Builder] = {"lamp": lamp, "plant": plant}  # may stand on a table or cabinet
SUPPORTS = ("table", "cabinet")
