"""The footprint turn: recovers a box's yaw and turning by minus it gives the box's own footprint."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from midi3d.geometry.footprint import footprint_turn, footprint_yaw, turned, turned_mesh, turned_samples


@pytest.mark.parametrize("degrees", [0.0, 11.5, 37.0, 63.0, 89.0])
def test_the_tightest_footprint_of_a_turned_box_is_its_own(degrees):
    centre = np.array([0.3, -0.1, 0.2])
    box = trimesh.creation.box([0.8, 0.3, 0.4]).apply_translation(centre)
    yawed = turned_mesh(box, np.radians(degrees), centre)
    samples = trimesh.sample.sample_surface(yawed, 3000, seed=0)[0]
    angle = footprint_yaw(samples)
    assert 0.0 <= angle < np.pi / 2
    # the box's yaw modulo a quarter turn (a turn by 90 degrees swaps its sides, same footprint)
    assert np.degrees(angle) == pytest.approx(degrees % 90.0, abs=0.05)
    back = turned(samples, -angle, centre)
    extents = np.sort(np.ptp(back, axis=0)[[0, 2]])
    assert extents == pytest.approx([0.4, 0.8], abs=1e-3)
    assert np.ptp(back, axis=0)[1] == pytest.approx(0.3, abs=1e-3)  # the vertical axis is untouched
    if min(degrees % 90.0, 90.0 - degrees % 90.0) > 5.0:  # well turned: its axis-aligned footprint is larger
        assert np.prod(np.ptp(samples, axis=0)[[0, 2]]) > 1.05 * 0.32


def test_turning_points_and_mesh_agree():
    mesh = trimesh.creation.cylinder(radius=0.1, height=0.5)
    centre, angle = np.array([0.1, 0.0, -0.2]), 0.7
    assert np.allclose(turned(mesh.vertices, angle, centre), turned_mesh(mesh, angle, centre).vertices)
    assert np.allclose(turned(turned(mesh.vertices, angle, centre), -angle, centre), mesh.vertices)


def test_turned_samples_turn_points_and_normals_alike():
    mesh = trimesh.creation.box([0.5, 0.2, 0.3])
    points, faces = trimesh.sample.sample_surface(mesh, 500, seed=1)
    samples = np.concatenate([points, mesh.face_normals[faces]], 1).astype(np.float32)
    angle, centre = footprint_turn(turned(points, 0.4, np.zeros(3)))
    moved = turned_samples(samples, 0.7, centre)
    assert moved.dtype == np.float32 and angle == pytest.approx(-0.4, abs=1e-6)
    assert np.allclose(moved[:, :3], turned(points, 0.7, centre), atol=1e-6)
    assert np.allclose(moved[:, 3:], turned(samples[:, 3:], 0.7, np.zeros(3)), atol=1e-6)  # normals: no shift
    assert np.allclose(np.linalg.norm(moved[:, 3:], axis=1), 1.0, atol=1e-5)
