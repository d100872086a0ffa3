"""Camera estimation, projected textures and the alignment step (issue: image-aligned scenes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh

from midi3d.geometry.camera import InstanceRaycaster, PinholeCamera, rotation_error_deg
from midi3d.geometry.camera_fit import CameraFitOptions, estimate_camera
from midi3d.io.errors import InputError
from midi3d.texture import TextureOptions, texture_meshes
from midi3d.texture.bake import decimated, rasterize
from midi3d.texture.projection import fill_hidden
from midi3d.texture.render import render_colours

COLOURS = np.array([[200, 40, 40], [40, 180, 60], [50, 70, 210], [230, 200, 30]], float)


def boxes() -> list[trimesh.Trimesh]:
    """Four boxes of different shapes on a floor (y up), the last one small and behind the first."""
    specs = [((0.5, 0.6, 0.4), (-0.4, 0.3, 0.2)), ((0.3, 0.9, 0.3), (0.35, 0.45, -0.1)),
             ((0.7, 0.25, 0.5), (0.1, 0.125, -0.6)), ((0.15, 0.15, 0.15), (-0.2, 0.075, -0.1))]
    return [trimesh.creation.box(extents=e, transform=trimesh.transformations.translation_matrix(c))
            for e, c in specs]


def true_camera(size: int = 128) -> PinholeCamera:
    return PinholeCamera.look_at((0.9, 1.1, 2.4), (0.0, 0.3, -0.1), (0, 1, 0), 50.0, size, size)


def photo(meshes, camera) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured rendering (instance k in COLOURS[k], white background) and its label map."""
    ids = InstanceRaycaster(meshes).render_ids(camera)
    palette = np.concatenate([[[255, 255, 255]], COLOURS[:len(meshes)]]).astype(np.uint8)
    return palette[ids], ids.astype(np.int64)


def turned(meshes, rotation):
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    return [m.copy().apply_transform(matrix) for m in meshes]


# -- camera ------------------------------------------------------------------------------------


def test_rays_and_projection_agree():
    camera = true_camera(64)
    rays = camera.rays()
    points = rays[..., :3] + 2.0 * rays[..., 3:]
    uv, depth = camera.project(points.reshape(-1, 3))
    u, v = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    np.testing.assert_allclose(uv, np.stack([u, v], -1).reshape(-1, 2), atol=1e-3)
    assert (depth > 0).all()
    pose = camera.pose_gl()  # OpenGL: the camera looks along its -z axis
    forward = -pose[:3, 2]
    np.testing.assert_allclose(forward, camera.rotation[2], atol=1e-12)
    again = PinholeCamera.from_dict(camera.to_dict())
    np.testing.assert_allclose(again.rotation, camera.rotation)
    assert again.focal == pytest.approx(camera.focal) and again.principal is None


def test_renderer_matches_the_synthetic_data_renderer():
    from midi3d.data.synth import Camera, SceneObject, render

    meshes = boxes()
    objects = [SceneObject(f"box-{k}", "box", m, (0.5, 0.5, 0.5)) for k, m in enumerate(meshes)]
    synth_camera = Camera(np.array([0.9, 1.1, 2.4]), np.array([0.0, 0.3, -0.1]), 50.0)
    _, labels = render(objects, synth_camera, 96)
    ids = InstanceRaycaster(meshes).render_ids(true_camera(96))
    assert (ids == labels).mean() > 0.999


@pytest.mark.parametrize("frame", ["as-is", "rotated"])
def test_estimate_recovers_the_camera(frame):
    meshes, camera = boxes(), true_camera()
    _, labels = photo(meshes, camera)
    rotation = np.eye(3)
    if frame == "rotated":  # the estimator must not rely on the frame's axis convention
        rotation = trimesh.transformations.random_rotation_matrix(np.random.default_rng(3).random(3))[:3, :3]
    fit = estimate_camera(turned(meshes, rotation), labels, [1, 2, 3, 4],
                          CameraFitOptions(working_size=128, views=48, rolls=6))
    assert rotation_error_deg(fit.camera.rotation, camera.rotation @ rotation.T) < 1.0
    assert abs(fit.camera.focal / camera.focal - 1) < 0.03
    assert fit.mean_iou > 0.93 and all(v is not None for v in fit.ious)


def test_estimate_skips_instances_without_a_mesh_and_refuses_an_empty_scene():
    meshes, camera = boxes(), true_camera()
    _, labels = photo(meshes, camera)
    fit = estimate_camera([meshes[0], None, meshes[2], meshes[3]], labels, [1, 2, 3, 4],
                          CameraFitOptions(working_size=96, views=32, rolls=6))
    assert fit.ious[1] is None and fit.ious[0] > 0.8
    with pytest.raises(InputError, match="no instance has a surface"):
        estimate_camera([None, None], labels, [1, 2])


def test_a_one_pixel_mask_is_scored_not_fatal():
    meshes, camera = boxes(), true_camera()
    _, labels = photo(meshes, camera)
    labels = labels.copy()
    labels[labels == 4] = 0
    labels[5, 5] = 4  # a one-pixel mask far from its box
    fit = estimate_camera(meshes, labels, [1, 2, 3, 4], CameraFitOptions(working_size=128, views=32, rolls=6))
    assert fit.ious[3] is not None and fit.ious[3] < 0.5
    assert min(fit.ious[:3]) > 0.8


# -- textures ----------------------------------------------------------------------------------


def test_rasterize_covers_a_square_with_exact_barycentrics():
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face_of, weights = rasterize(uv, faces, 16)
    assert (face_of >= 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-9)
    texel = np.stack(np.meshgrid(np.arange(16) + 0.5, np.arange(16) + 0.5), -1) / 16  # (x, y)
    rebuilt = np.einsum("hwk,hwkc->hwc", weights, uv[faces[face_of]])
    np.testing.assert_allclose(rebuilt, texel, atol=1e-9)


def test_decimation_keeps_the_surface_within_the_face_budget():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)  # 20,480 faces
    small = decimated(sphere, 500)
    assert 400 <= len(small.faces) <= 500
    radius = np.linalg.norm(small.vertices, axis=1)
    assert np.abs(radius - 0.5).max() < 0.02  # vertices stay on the sphere (one cell of 500 faces: ~0.05)
    assert abs(small.area - sphere.area) / sphere.area < 0.02
    assert decimated(sphere, len(sphere.faces)) is sphere  # under the budget: unchanged


def test_fill_hidden_is_harmonic_over_the_surface():
    strip = trimesh.Trimesh(vertices=[[x, y, 0] for x in range(5) for y in (0, 1)],
                            faces=[[2 * i, 2 * i + 2, 2 * i + 1] for i in range(4)]
                            + [[2 * i + 1, 2 * i + 2, 2 * i + 3] for i in range(4)], process=False)
    colours = np.zeros((10, 3))
    known = np.zeros(10, bool)
    known[[0, 1]], known[[8, 9]] = True, True
    colours[[8, 9]] = 100.0
    filled = fill_hidden(strip, colours, known, fallback=np.array([1.0, 2.0, 3.0]))
    assert np.isfinite(filled).all()
    assert np.all(np.diff(filled[::2, 0]) >= -1e-9) and 0 < filled[4, 0] < 100  # monotone between the ends
    lonely = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]], process=False)
    np.testing.assert_allclose(fill_hidden(lonely, np.zeros((3, 3)), np.zeros(3, bool), np.array([9.0, 8, 7])),
                               [[9, 8, 7]] * 3)


@pytest.mark.parametrize("mode", ["project", "vertex"])
def test_projected_colours_reproduce_the_photo_and_leave_no_holes(mode):
    meshes, camera = boxes(), true_camera(160)
    rgb, labels = photo(meshes, camera)
    if mode == "vertex":  # vertex colours need vertices: a box has eight
        meshes = [trimesh.Trimesh(*trimesh.remesh.subdivide_to_size(m.vertices, m.faces, 0.02)) for m in meshes]
    result = texture_meshes(meshes, [1, 2, 3, 4], camera, rgb, labels, TextureOptions(mode=mode))
    data = trimesh.Scene([m for m in result.meshes]).export(file_type="glb")
    reloaded = list(trimesh.load(io.BytesIO(data), file_type="glb").geometry.values())
    assert len(reloaded) == 4
    rendered, _ = render_colours(result.meshes, camera)
    on = labels > 0
    mse = np.mean((rendered[on] - rgb[on]) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 25
    # no holes: the hidden sides carry the visible colours, every vertex / texel has one
    for index, mesh in enumerate(result.meshes):
        if mode == "vertex":
            colours = mesh.visual.vertex_colors[:, :3].astype(float)
        else:
            colours = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB")).reshape(-1, 3).astype(float)
        assert np.abs(colours - COLOURS[index]).max(1).mean() < 12, index
    assert all(0 < f < 1 for f in result.visible_fraction)


def test_a_hidden_instance_takes_its_mask_colour_with_a_warning():
    meshes, camera = boxes(), true_camera(128)
    rgb, labels = photo(meshes, camera)
    hidden = trimesh.creation.box(extents=(0.05, 0.05, 0.05),
                                  transform=trimesh.transformations.translation_matrix((-0.4, 0.3, 0.2)))
    labels = labels.copy()
    labels[:3, :3] = 5  # its mask: a corner of the photo (white)
    result = texture_meshes(meshes + [hidden], [1, 2, 3, 4, 5], camera, rgb, labels, TextureOptions(mode="vertex"))
    assert result.visible_fraction[4] == 0.0
    np.testing.assert_allclose(result.meshes[4].visual.vertex_colors[:, :3], 255)
    assert any("instance 5" in w for w in result.warnings)


# -- the alignment step and the GLB ------------------------------------------------------------


def test_aligned_glb_carries_camera_textures_and_reprojection_iou(tmp_path):
    from midi3d.pipelines.alignment import align_scene
    from midi3d.pipelines.pipeline_midi import MIDIPipelineOutput
    from midi3d.pipelines.scene import SceneInputs, export_scene

    meshes, camera = boxes(), true_camera(128)
    rgb, labels = photo(meshes, camera)
    result = MIDIPipelineOutput(meshes=meshes, instance_ids=[1, 2, 3, 4])
    scene = SceneInputs(rgb, labels, "boxes")
    alignment = align_scene(scene, result, "project")
    assert alignment.texture_mode == "project" and alignment.mean_iou > 0.9
    path = export_scene(result, tmp_path / "scene.glb", alignment)
    loaded = trimesh.load(path)
    assert sorted(loaded.graph.nodes_geometry) == [f"instance_{i}" for i in range(1, 5)]
    assert all(isinstance(g.visual, trimesh.visual.TextureVisuals) and g.visual.material.baseColorTexture
               is not None for g in loaded.geometry.values())
    assert loaded.has_camera
    np.testing.assert_allclose(loaded.camera_transform, alignment.camera.pose_gl(), atol=1e-5)
    extras = loaded.metadata
    assert set(extras["midi3d_reprojection_iou"]) == {"1", "2", "3", "4"}
    assert extras["midi3d_camera"]["focal_px"] == pytest.approx(alignment.camera.focal)
    sheet = alignment.overlay(rgb)
    assert sheet.shape == (128, 384, 3)


def test_no_surface_anywhere_still_raises_the_export_message(tmp_path):
    from midi3d.pipelines.batch import AlignOptions, align_output
    from midi3d.pipelines.pipeline_midi import MIDIPipelineOutput
    from midi3d.pipelines.scene import SceneInputs

    rgb, labels = photo(boxes(), true_camera(64))
    result = MIDIPipelineOutput(meshes=[None, None, None, None], instance_ids=[1, 2, 3, 4])
    assert align_output(SceneInputs(rgb, labels), result, AlignOptions(), tmp_path / "x.glb") is None


def test_align_options_are_checked():
    from midi3d.pipelines.batch import AlignOptions

    with pytest.raises(InputError, match="--texture"):
        AlignOptions(texture="paint")
    with pytest.raises(InputError, match="need the camera"):
        AlignOptions(camera=False, texture="project")


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import TEST_SPEC
    from midi3d.models.factory import PipelineSpec, build_pipeline

    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(folder)
    return folder


def generate(*args):
    from typer.testing import CliRunner

    from midi3d.cli import app

    result = CliRunner().invoke(app, ["generate", *map(str, args)])
    return result.exit_code, result.output


def test_generate_texture_modes(tmp_path, model_dir):
    from PIL import Image

    from conftest import BUNDLED

    inputs = [BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "--model", model_dir,
              "--steps", "2", "--resolution", "32", "--quiet"]
    code, output = generate(*inputs, "-o", tmp_path / "a.glb", "--overlay")
    assert code == 0, output
    scene = trimesh.load(tmp_path / "a.glb", force="scene")
    assert scene.has_camera and scene.metadata["midi3d_texture"] == "project"
    assert all(isinstance(g.visual, trimesh.visual.TextureVisuals) for g in scene.geometry.values())
    width = Image.open(BUNDLED / "blocks-5_rgb.png").size[0]
    assert Image.open(tmp_path / "a_overlay.png").size[0] == 3 * width
    code, output = generate(*inputs, "-o", tmp_path / "b.glb", "--texture", "vertex")
    assert code == 0, output
    scene = trimesh.load(tmp_path / "b.glb", force="scene")
    assert scene.metadata["midi3d_texture"] == "vertex"
    assert all(g.visual.kind == "vertex" for g in scene.geometry.values())
    code, output = generate(*inputs, "-o", tmp_path / "c.glb", "--no-camera", "--texture", "none")
    assert code == 0, output
    assert not trimesh.load(tmp_path / "c.glb", force="scene").has_camera
    code, output = generate(*inputs, "-o", tmp_path / "d.glb", "--no-camera")
    assert code == 2 and "need the camera" in output and not (tmp_path / "d.glb").exists()
    code, output = generate(*inputs, "-o", tmp_path / "e.glb", "--texture", "paint")
    assert code == 2 and "--texture paint" in output


def test_embedded_model_on_the_official_examples(tmp_path, examples_dir):
    """The shipped model on a real input: a textured GLB that re-loads, one node per instance with
    a texture image, a camera, and the overlay next to it."""
    from midi3d.io.labelmap import instance_ids, read_label_map

    name = "3dfront-LivingRoom-360"
    out = tmp_path / f"{name}.glb"
    code, output = generate(examples_dir / f"{name}_rgb.png", "--seg", examples_dir / f"{name}_seg.png", "-o", out,
                            "--steps", "10", "--overlay", "--quiet")
    assert code == 0, output
    scene = trimesh.load(out, force="scene")
    ids = instance_ids(read_label_map(examples_dir / f"{name}_seg.png"))
    empty = scene.metadata["midi3d_empty_instance_ids"]
    assert sorted(scene.graph.nodes_geometry) == sorted(f"instance_{i}" for i in ids if i not in empty)
    for geometry in scene.geometry.values():
        assert isinstance(geometry.visual, trimesh.visual.TextureVisuals)
        assert geometry.visual.material.baseColorTexture is not None
    assert scene.has_camera and out.with_name(f"{name}_overlay.png").is_file()
    # the shipped model's shapes on real photos are blobs: the score measures them (a camera looking
    # elsewhere scores ~0); on ground-truth meshes the same estimator reaches ~0.97
    assert scene.metadata["midi3d_reprojection_mean_iou"] > 0.15


def test_the_demo_viewer_opens_at_the_estimated_eye():
    """Gradio's orbit camera (alpha, beta in degrees, radius) around the scene's box centre, in the
    viewer's left-handed frame (glTF z flipped)."""
    from types import SimpleNamespace

    from midi3d.demo.session import viewer_camera

    meshes = [trimesh.creation.box(extents=(2, 2, 2))]  # centred at the origin
    camera = PinholeCamera.look_at((0.0, 0.0, 5.0), (0, 0, 0), (0, 1, 0), 50, 64, 64)  # on +z
    alpha, beta, radius = viewer_camera(SimpleNamespace(camera=camera), meshes)
    assert radius == pytest.approx(5.0) and beta == pytest.approx(90.0) and alpha == pytest.approx(-90.0)
    above = PinholeCamera.look_at((3.0, 4.0, 0.0), (0, 0, 0), (0, 1, 0), 50, 64, 64)
    alpha, beta, radius = viewer_camera(SimpleNamespace(camera=above), meshes)
    assert radius == pytest.approx(5.0) and alpha == pytest.approx(0.0) and beta == pytest.approx(np.degrees(
        np.arccos(0.8)))
    assert viewer_camera(None, meshes) is None
