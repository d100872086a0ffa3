"""The 3D-Front (MIDI) dataset layout: folder names and the safe surface-file reader, shared by
the synthetic generator, the benchmark readers and the training cache.

Under a dataset root::

    3D-FRONT-RENDER/<house>/<room>/render_0000.webp, semantic_0000.png   (object k has id k+1)
    3D-FRONT-SCENE/<house>/<room>/<object>.glb                           (scene coordinates)
    3D-FRONT-SURFACE/<house>/<room>/<object>.npy     (dict: surface_points, surface_normals)
    midi_room_ids.json, midi_furniture_ids.json, valid_room_ids.json, valid_furniture_ids.json
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

RENDER, SCENE, SURFACE = "3D-FRONT-RENDER", "3D-FRONT-SCENE", "3D-FRONT-SURFACE"
ROOM_IDS, FURNITURE_IDS = "midi_room_ids.json", "midi_furniture_ids.json"
SYNTH_CONFIG = "synth_config.json"  # the settings of a dataset made by `midi3d synth`


def dataset_fingerprint(root: str | Path) -> str:
    """A hash of the dataset's index files (rooms, their objects in instance order, settings):
    it changes when the dataset is made again, whatever its folder is called."""
    import hashlib

    digest = hashlib.sha256()
    for name in (ROOM_IDS, FURNITURE_IDS, SYNTH_CONFIG):
        path = Path(root) / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()[:16]


def read_surface(path: str | Path) -> dict[str, np.ndarray]:
    """Read a surface ``.npy`` (a pickled dict of arrays, or a plain ``[K, 6]`` array) safely.

    Pickled dicts are decoded by an unpickler that only rebuilds numpy arrays and plain
    containers, so a crafted file cannot run code. Errors name the file.
    """
    path = Path(path)
    try:
        data = _read_npy(path)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: {err}") from None
    except (OSError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: unreadable surface file ({err})") from None
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.ndim != 2 or data.shape[1] != 6:
            raise ValueError(f"{path}: expected a [K, 6] array or a dict, got shape {data.shape}")
        return {"surface_points": data[:, :3], "surface_normals": data[:, 3:]}
    if isinstance(data, np.ndarray) and data.shape == ():
        data = data.item()
    if not isinstance(data, dict) or not isinstance(data.get("surface_points"), np.ndarray):
        raise ValueError(f"{path}: expected a dict with a 'surface_points' array")
    return {k: np.asarray(v, dtype=np.float32) for k, v in data.items() if isinstance(v, np.ndarray)}


def listed_objects(root: str | Path) -> list[tuple[str, str]]:
    """Every ``(room, object name)`` of a dataset root, in its index files' order."""
    import json

    root = Path(root)
    rooms = json.loads((root / ROOM_IDS).read_text())
    names = json.loads((root / FURNITURE_IDS).read_text())
    return [(room, name) for room, listed in zip(rooms, names) for name in listed]


def encoder_inputs(root: str | Path, objects: list[tuple[str, str]], points: int = 2048,
                   seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per object, ``points`` random surface samples with normals (the VAE encoder's input,
    ``[N, points, 6]`` float32) and all its surface points (the ground truth)."""
    rng = np.random.default_rng(seed)
    inputs, truth = [], []
    for room, name in objects:
        data = read_surface(Path(root) / SURFACE / room / f"{name}.npy")
        samples = np.concatenate([data["surface_points"], data["surface_normals"]], axis=1).astype(np.float32)
        inputs.append(samples[rng.choice(len(samples), points, replace=len(samples) < points)])
        truth.append(data["surface_points"])
    return np.stack(inputs), truth


def _read_npy(path: Path):
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(handle)
        if dtype != object:
            handle.seek(0)
            return np.load(handle, allow_pickle=False)
        return _SafeUnpickler(handle).load()


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a surface file")
        return super().find_class(module, name)
