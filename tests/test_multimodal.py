"""Every modality combination trains on tiny_omni through the reference JSONL; media errors name file and line."""

import pytest
import torch

from lco.config import check_modalities
from lco.data.collate import TripletCollator
from lco.data.sources import TableSource
from lco.errors import ConfigError, RecordError
from lco.losses import InfoNCE
from lco.methods.lora import LoRA
from lco.models.embedder import Embedder
from tests.media_fixtures import SCENES, caption, write_jsonl

COMBINATIONS = {
    "text": lambda m, i: {"text": caption(SCENES[i])},
    "image": lambda m, i: {"text": "", "image_path": m["image"][i]},
    "image+text": lambda m, i: {"text": "Look:", "image_path": m["image"][i]},
    "audio": lambda m, i: {"text": "", "audio_path": m["audio"][i]},
    "video": lambda m, i: {"text": "", "video_path": m["video"][i]},
}


@pytest.fixture(scope="module")
def omni():
    from lco.models.backbone import load_backbone

    embedder = Embedder(load_backbone("qwen2_5_omni", "lco-tiny/tiny_omni"))
    LoRA(r=4, alpha=8, dropout=0.0).apply(embedder)
    return embedder


@pytest.mark.parametrize("combo", sorted(COMBINATIONS))
def test_one_training_step_per_modality(media, omni, combo, tmp_path):
    root, files = media
    rows = [{"anchor": COMBINATIONS[combo](files, i), "positive": {"text": caption(SCENES[i]), "image_path": ""},
             "negative": {"text": caption(SCENES[(i + 1) % 4]), "image_path": ""}} for i in range(4)]
    path = write_jsonl(root / f"{combo.replace('+', '_')}.jsonl", rows)
    records = TableSource("mm", path=path).load()
    assert records[0]["anchor"].keys() >= ({"text"} if combo == "text" else {combo.split("+")[0]})
    batch = TripletCollator(omni.preprocessor)(records)
    expected = {"image": "pixel_values", "image+text": "pixel_values", "audio": "input_features",
                "video": "pixel_values_videos"}.get(combo)
    if expected:
        assert expected in batch["anchor"] and expected not in batch["positive"]
    omni.zero_grad()
    loss = InfoNCE()(omni(batch["anchor"]), omni(batch["positive"]), omni(batch["negative"]))
    loss.backward()
    grads = [p.grad for n, p in omni.named_parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for n, p in omni.named_parameters() if "visual" in n or "audio_tower" in n)


def test_video_file_and_frame_folder_give_processor_inputs(media, omni):
    root, files = media
    encoded = omni.preprocessor([{"video": str(root / files["mp4"][0])}, {"video": str(root / files["video"][0])}])
    grid = encoded["video_grid_thw"]
    assert grid.shape == (2, 3) and grid[:, 0].tolist() == [3, 2]  # 6 frames -> 3 pairs; 3 frames padded to 4 -> 2
    assert encoded["pixel_values_videos"].shape[0] == int(grid.prod(dim=1).sum())


def test_a_clip_knows_its_frames_source_indices_and_rate(media):
    """What Qwen3-VL's frame times are computed from: the mp4's rate (4 fps) and the sampled frames' indices."""
    from lco.data.media import load_video

    root, files = media
    clip = load_video(str(root / files["mp4"][0]), max_frames=4)
    assert (clip.indices, clip.total, clip.fps, len(clip.frames)) == ([0, 2, 3, 5], 6, 4.0, 4)
    clip = load_video(str(root / files["mp4"][0]), max_frames=3)  # 0, 2.5 -> 2, 5; then the last repeated
    assert clip.indices == [0, 2, 5, 5] and clip.frames[3].tobytes() == clip.frames[2].tobytes()
    folder = load_video(str(root / files["video"][0]))
    assert (folder.indices, folder.total, folder.fps) == ([0, 1, 2, 2], 3, None)
    assert folder.metadata(folder_fps=1.5) == {"total_num_frames": 3, "fps": 1.5, "frames_indices": [0, 1, 2, 2]}


def test_images_are_downscaled_to_fit(media, omni, tmp_path):
    from PIL import Image

    from lco.data.media import load_image

    big = tmp_path / "big.png"
    Image.new("RGB", (1400, 700)).save(big)
    assert load_image(str(big), 700).size == (700, 350)
    assert load_image(str(big), 100).size == (100, 50)


def test_audio_is_resampled_and_truncated(media):
    from lco.data.media import load_audio

    root, files = media
    wave = load_audio(str(root / files["audio"][0]), 16000, max_seconds=0.25)
    assert wave.dtype.name == "float32" and wave.shape == (4000,)
    assert load_audio(str(root / files["audio"][0]), 16000).shape == (8000,)  # 0.5 s at 16 kHz


@pytest.mark.parametrize("problem,message", [
    ("missing image", "image file not found"),
    ("corrupt image", "cannot decode image"),
    ("corrupt audio", "cannot decode audio"),
    ("empty frame folder", "has no frame images"),
    ("corrupt video", "cannot decode video"),
    ("missing video", "video file not found"),
])
def test_bad_media_names_file_and_line(media, tmp_path, problem, message):
    root, files = media
    bad = {"missing image": {"image_path": "nope.png"}, "corrupt image": {"image_path": "broken.png"},
           "corrupt audio": {"audio_path": "broken.wav"}, "empty frame folder": {"video_path": "empty"},
           "corrupt video": {"video_path": "broken.mp4"}, "missing video": {"video_path": "gone.mp4"}}[problem]
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    (tmp_path / "empty").mkdir()
    good = {"anchor": {"text": "a", "image_path": ""}, "positive": {"text": "b", "image_path": ""}}
    path = write_jsonl(tmp_path / "d.jsonl", [good, {**good, "anchor": {"text": "", **bad}}])
    with pytest.raises(RecordError) as err:
        TableSource("mm", path=path).load()
    assert f"{path}, line 2" in str(err.value) and message in str(err.value) and "on_error=skip" in str(err.value)


def test_audio_data_on_a_vl_backbone_fails_before_loading():
    with pytest.raises(ConfigError, match="audio items but model.family=qwen2_5_vl"):
        check_modalities({"text", "audio"}, "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct")
    check_modalities({"text", "image", "video", "audio"}, "qwen2_5_omni", "x")  # the Omni thinker has all towers


def test_image_bytes_from_a_parquet_table(media, omni, tmp_path):
    import pandas as pd

    root, files = media
    png = (root / files["image"][0]).read_bytes()
    rows = [{"anchor": {"text": "", "image": {"bytes": png, "path": None}}, "positive": caption(SCENES[0])}] * 2
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    records = TableSource("t", path=str(tmp_path / "t.parquet")).load()
    assert records[0]["anchor"]["image"]["bytes"] == png
    batch = omni.preprocessor([r["anchor"] for r in records])
    assert batch["image_grid_thw"].shape == (2, 3)


def test_collation_runs_in_worker_processes(media, omni):
    from lco.data.datamodule import TripletDataModule
    from lco.data.synthetic import SceneTriplets

    dm = TripletDataModule({"scenes": SceneTriplets(n=64, image_fraction=0.5)}, batch_size=4, num_workers=2,
                           val_size=0)
    dm.load()
    dm.attach(omni.preprocessor)
    in_workers = list(dm.train_dataloader())
    dm.num_workers = 0
    in_main = list(dm.train_dataloader())
    assert len(in_workers) == len(in_main) == 16
    for a, b in zip(in_workers, in_main):
        assert a["anchor"].keys() == b["anchor"].keys()
        assert all(torch.equal(a["anchor"][k], b["anchor"][k]) for k in a["anchor"])
    assert any("pixel_values" in b["anchor"] for b in in_main)
