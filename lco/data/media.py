"""Media loading for collation (in DataLoader workers) and cheap checks at record-reading time.

Sources accepted for every medium: a local path (already resolved against the data file's folder), an
http(s) URL, raw ``bytes``, or a ``{"bytes": ..., "path": ...}`` dict (Hugging Face ``Image``/``Audio``
features). Images are also accepted as PIL images. A video is a video file (decoded with PyAV), a folder of
frame images, or a list of frame paths.

Outputs: ``load_image`` -> RGB ``PIL.Image`` fitted inside ``max_size`` x ``max_size`` (aspect kept);
``load_audio`` -> mono float32 ``np.ndarray`` at ``sampling_rate``, cut to ``max_seconds`` (also from an
already decoded ``{"array", "sampling_rate"}`` dict);
``load_video`` -> a ``Clip``: RGB ``PIL.Image`` frames (an even count, at most ``max_frames``) with their indices in
the source and the source's frame rate (Qwen3-VL writes each frame pair's time into the prompt).
"""

from __future__ import annotations

import io
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from lco.errors import MediaError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read_bytes(source) -> bytes | None:
    if isinstance(source, bytes):
        return source
    if isinstance(source, dict):
        return source.get("bytes") or (Path(source["path"]).read_bytes() if source.get("path") else None)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310 - user-provided data URLs
            return response.read()
    return None


def _open(source):
    """A file-like object or path for ``source``."""
    data = _read_bytes(source)
    if data is not None:
        return io.BytesIO(data)
    path = Path(source)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    return path


def load_image(source, max_size: int = 700) -> Image.Image:
    try:
        image = source if isinstance(source, Image.Image) else Image.open(_open(source))
        image = image.convert("RGB")
    except MediaError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        raise MediaError(f"cannot decode image {_describe(source)}: {err}") from None
    if max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size), Image.Resampling.BICUBIC)
    return image


def load_audio(source, sampling_rate: int = 16000, max_seconds: float = 30.0) -> np.ndarray:
    import soundfile
    from scipy.signal import resample_poly

    if isinstance(source, dict) and "array" in source:  # already decoded (datasets Audio / mteb AudioInputItem)
        wave, rate = np.asarray(source["array"], dtype=np.float32), int(source["sampling_rate"])
        wave = wave if wave.ndim == 1 else wave.mean(axis=-1 if wave.shape[-1] <= 8 else 0)
    else:
        try:
            wave, rate = soundfile.read(_open(source), dtype="float32", always_2d=True)
        except MediaError:
            raise
        except Exception as err:  # noqa: BLE001
            raise MediaError(f"cannot decode audio {_describe(source)}: {err}") from None
        wave = wave.mean(axis=1)
    if rate != sampling_rate:
        ratio = Fraction(sampling_rate, rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
    return wave[: int(max_seconds * sampling_rate)]


def _frame_paths(source) -> list[Path] | None:
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    path = Path(source) if isinstance(source, str) else None
    if path is not None and path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    return None


@dataclass
class Clip:
    """A sampled video: ``frames`` (RGB, an even count), each one's ``indices`` in the source (the last repeated
    when the count was odd), the source's ``total`` frame count and ``fps`` (None for frame folders and lists)."""

    frames: list[Image.Image]
    indices: list[int]
    total: int
    fps: float | None = None

    def metadata(self, folder_fps: float) -> dict:
        """transformers' ``VideoMetadata`` fields of this clip (frame folders are taken at ``folder_fps``)."""
        return {"total_num_frames": self.total, "fps": self.fps or folder_fps, "frames_indices": self.indices}


def _even_indices(count: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced indices of ``count`` frames, the last repeated to an even count
    (Qwen groups frames in temporal pairs)."""
    indices = list(range(count))
    if count > max_frames:
        indices = np.linspace(0, count - 1, max_frames).round().astype(int).tolist()
    return indices + indices[-1:] * (len(indices) % 2)


def load_video(source, max_frames: int = 16, max_size: int = 700) -> Clip:
    paths = _frame_paths(source)
    if paths is not None:
        if not paths:
            raise MediaError(f"video {_describe(source)} has no frame images ({', '.join(FRAME_SUFFIXES)})")
        indices = _even_indices(len(paths), max_frames)
        return Clip([load_image(str(paths[i]), max_size) for i in indices], indices, len(paths))
    import av

    try:
        with av.open(_open(source)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [f.to_image() for f in container.decode(stream)]
    except MediaError:
        raise
    except Exception as err:  # noqa: BLE001
        raise MediaError(f"cannot decode video {_describe(source)}: {err}") from None
    if not frames:
        raise MediaError(f"video {_describe(source)} has no frames")
    indices = _even_indices(len(frames), max_frames)
    return Clip([load_image(frames[i], max_size) for i in indices], indices, len(frames),
                float(rate) if rate else None)


def _describe(source) -> str:
    if isinstance(source, (bytes, dict)):
        return "<bytes>" if isinstance(source, bytes) else str(source.get("path") or "<bytes>")
    return str(source)


def check_media(kind: str, source, level: str = "decode") -> None:
    """Raise ``MediaError`` if ``source`` is missing (``level="exists"``) or undecodable (``"decode"``:
    image/audio headers are read, frame folders listed, video containers opened). URLs are not fetched."""
    if level == "none" or isinstance(source, (Image.Image, bytes, dict)):
        return
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return
    paths = _frame_paths(source) if kind == "video" else None
    targets = paths if paths is not None else [Path(source)]
    if paths is not None and not paths:
        raise MediaError(f"video {source} has no frame images")
    for path in targets:
        if not path.exists():
            raise MediaError(f"{kind} file not found: {path}")
    if level != "decode":
        return
    try:
        if kind == "image" or paths is not None:
            for path in targets:
                with Image.open(path) as image:
                    image.verify()
        elif kind == "audio":
            import soundfile

            soundfile.info(str(targets[0]))
        elif kind == "video":
            import av

            with av.open(str(targets[0])) as container:
                if not container.streams.video:
                    raise MediaError(f"video {targets[0]} has no video stream")
    except MediaError:
        raise
    except Exception as err:  # noqa: BLE001
        raise MediaError(f"cannot decode {kind} {source}: {err}") from None
