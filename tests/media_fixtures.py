"""Small real media files made by the tests: rendered scene PNGs, a tone WAV, frame folders, an MPEG-4 clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile

from lco.data.synthetic import render_scene

SCENES = [
    {"colour": "red", "shape": "cube", "size": "large", "position": "left"},
    {"colour": "blue", "shape": "sphere", "size": "small", "position": "top"},
    {"colour": "green", "shape": "cone", "size": "large", "position": "centre"},
    {"colour": "yellow", "shape": "cylinder", "size": "small", "position": "right"},
]


def caption(scene: dict) -> str:
    return "A {size} {colour} {shape} at the {position}.".format(**scene)


def write_media(root: Path) -> dict[str, list[str]]:
    """Files under ``root`` (relative names returned per kind): 4 images, 4 audio clips, 4 frame folders, 1 mp4."""
    out = {"image": [], "audio": [], "video": [], "mp4": []}
    for i, scene in enumerate(SCENES):
        render_scene(scene).save(root / f"scene{i}.png")
        out["image"].append(f"scene{i}.png")
        t = np.arange(int(22050 * 0.5)) / 22050  # 0.5 s at 22.05 kHz: exercises resampling to 16 kHz
        soundfile.write(root / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t), 22050)
        out["audio"].append(f"tone{i}.wav")
        frames = root / f"clip{i}"
        frames.mkdir()
        for j, position in enumerate(["left", "centre", "right"]):  # the object moves: 3 frames (padded to 4)
            render_scene({**scene, "position": position}).save(frames / f"{j:03d}.png")
        out["video"].append(f"clip{i}")
    _write_mp4(root / "clip.mp4")
    out["mp4"].append("clip.mp4")
    return out


def _write_mp4(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 40, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
