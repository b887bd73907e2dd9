"""Offline feature extraction on the two real MOSI clips (../shared/data/mosi/raw)."""

from __future__ import annotations

import csv
import math
import shutil
import wave

import numpy as np
import pytest

pytest.importorskip("av", reason="extraction needs the [extract] extra (PyAV)")
pytest.importorskip("opensmile", reason="extraction needs the [extract] extra (opensmile)")
pytest.importorskip("mediapipe", reason="extraction needs the [extract] extra (mediapipe)")

from msakit.config import ConfigError  # noqa: E402
from msakit.extract import ExtractionError, ExtractorConfig, build_extractor_config  # noqa: E402
from msakit.extract.features import (  # noqa: E402
    ClipFeatureExtractor,
    finalize_clip,
    normalization_statistics,
    resample_to_bins,
)
from msakit.extract.media import decode_audio, probe  # noqa: E402
from msakit.extract.pipeline import extract_folder  # noqa: E402
from msakit.extract.vision import EXPRESSION_FEATURES, expression_features  # noqa: E402

WAV = "03bSnISJMiM_1.wav"
MP4 = "Oz06ZWiO20M_6.mp4"
WAV_TEXT = "anyhow it was really good"
MP4_TEXT = ("and sucker punch is a failer but like a really ambitious weird the interesting "
            "idiosyncratic failure")


@pytest.fixture(scope="module")
def extractor():
    return ClipFeatureExtractor(ExtractorConfig())


@pytest.fixture(scope="module")
def mp4_features(extractor, mosi_raw_dir):
    return extractor.extract(mosi_raw_dir / MP4, MP4_TEXT)


# -- decoding ------------------------------------------------------------------------------

def test_wav_is_decoded_to_16k_mono(mosi_raw_dir):
    info = probe(mosi_raw_dir / WAV)
    samples = decode_audio(mosi_raw_dir / WAV)
    assert not info.has_video and info.has_audio
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert samples.size / 16000 == pytest.approx(info.duration, abs=0.02)
    assert np.abs(samples).max() <= 1.0 and np.sqrt(np.mean(samples ** 2)) > 1e-3


def test_audio_track_of_the_mp4_is_decoded(mosi_raw_dir):
    info = probe(mosi_raw_dir / MP4)
    samples = decode_audio(mosi_raw_dir / MP4)
    assert info.has_video and info.has_audio and info.video_fps == pytest.approx(30.0)
    # AAC track of 7.44 s resampled from 44.1 kHz
    assert samples.size / 16000 == pytest.approx(7.44, abs=0.05)
    assert np.sqrt(np.mean(samples ** 2)) > 1e-3  # speech, not silence


# -- features of the real clips --------------------------------------------------------------

def test_mp4_feature_shapes_and_frame_rates(mp4_features, extractor):
    info = mp4_features.info
    audio, vision = mp4_features.audio, mp4_features.vision
    # audio: 10 ms frames, eGeMAPS LLDs (25) + 13 MFCC + pitch(3) + log RMS
    assert audio.shape[1] == extractor.audio.dim == 25 + 13 + 3 + 1
    assert abs(audio.shape[0] - info["duration_s"] * 100) <= 5
    assert info["audio_fps"] == 100.0
    # vision: every frame of the 30 fps, 225-frame video
    assert vision.shape == (225, len(EXPRESSION_FEATURES))
    assert info["vision_fps"] == pytest.approx(30.0, abs=0.1)
    assert np.isfinite(audio).all() and np.isfinite(vision).all()


def test_face_is_found_in_most_frames_and_features_are_plausible(mp4_features):
    vision = mp4_features.vision
    face = vision[:, 0] == 1
    assert face.mean() > 0.9 and mp4_features.info["face_frames"] == int(face.sum())
    assert np.all(vision[~face] == 0)  # frames without a face: zero row, flag 0
    names = {n: i for i, n in enumerate(EXPRESSION_FEATURES)}
    rows = vision[face]
    # distances scaled by the inter-ocular distance land in anatomical ranges
    assert 0.5 < np.median(rows[:, names["mouth_width"]]) < 1.5
    assert 0.0 <= rows[:, names["mouth_open"]].min() and rows[:, names["mouth_open"]].max() < 1
    assert 0.8 < np.median(rows[:, names["nose_to_chin"]]) < 2.0
    assert np.abs(rows[:, names["head_yaw_deg"]]).max() < 60
    assert mp4_features.warnings == [] or "no face" in mp4_features.warnings[0]


def test_wav_gets_one_marked_vision_row(extractor, mosi_raw_dir):
    features = extractor.extract(mosi_raw_dir / WAV, WAV_TEXT)
    assert features.vision.shape == (1, extractor.vision.dim)
    assert features.vision[0, 0] == 0.0
    assert any("audio-only" in w for w in features.warnings)
    assert abs(features.audio.shape[0] - 333) <= 5
    with pytest.raises(ExtractionError, match="no video track"):
        ClipFeatureExtractor(ExtractorConfig(), strict=True).extract(mosi_raw_dir / WAV,
                                                                     WAV_TEXT)


def test_vision_fps_option_subsamples_frames(mosi_raw_dir):
    config = build_extractor_config(overrides=["vision.fps=10", "audio.extractors=[opensmile]"])
    features = ClipFeatureExtractor(config).extract(mosi_raw_dir / MP4, MP4_TEXT)
    assert features.vision.shape[0] == 75  # 7.5 s at 10 fps
    assert features.info["vision_fps"] == pytest.approx(10.0, abs=0.1)
    assert features.audio.shape[1] == 25


def test_clip_level_audio(mosi_raw_dir):
    config = build_extractor_config(overrides=["audio.level=clip"])
    features = ClipFeatureExtractor(config).extract(mosi_raw_dir / WAV, WAV_TEXT)
    assert features.audio.shape == (1, 88 + 2 * 17)  # eGeMAPS functionals + mean/std


# -- bad input ------------------------------------------------------------------------------

def test_truncated_mp4_gives_a_clear_error(tmp_path, mosi_raw_dir, extractor):
    data = (mosi_raw_dir / MP4).read_bytes()
    broken = tmp_path / "truncated.mp4"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractionError, match=r"truncated\.mp4.*(corrupt|truncated)") as err:
        extractor.extract(broken, "some text")
    assert err.value.stage == "media"


def test_empty_wavs_give_clear_errors(tmp_path, extractor):
    empty_file = tmp_path / "empty.wav"
    empty_file.write_bytes(b"")
    with pytest.raises(ExtractionError, match=r"empty\.wav: the file is empty"):
        extractor.extract(empty_file, "some text")
    no_samples = tmp_path / "silent.wav"
    with wave.open(str(no_samples), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
    with pytest.raises(ExtractionError, match=r"silent\.wav.*no samples"):
        extractor.extract(no_samples, "some text")


def test_missing_transcript_is_refused_naming_the_clip(mosi_raw_dir, extractor):
    with pytest.raises(ExtractionError, match=f"{WAV}: no transcript") as err:
        extractor.extract(mosi_raw_dir / WAV, "  ")
    assert err.value.stage == "text"


def test_bad_config_values_are_config_errors():
    with pytest.raises(ConfigError, match="vision.fps"):
        build_extractor_config(overrides=["vision.fps=-2"])
    with pytest.raises(ConfigError, match="colour"):
        build_extractor_config(overrides=["vision.colour=1"])
    assert build_extractor_config(overrides=["alignment=fixed"]).alignment == "fixed"


# -- geometry, alignment, normalisation ------------------------------------------------------

def _synthetic_face(rng):
    points = rng.uniform(0.3, 0.7, size=(478, 3))
    points[:, 2] = rng.normal(0, 0.02, 478)
    return points


def test_expression_features_ignore_scale_and_roll():
    rng = np.random.default_rng(0)
    points = _synthetic_face(rng)
    base = expression_features(points, 640, 640)
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = points.copy()
    moved[:, :2] = (points[:, :2] - 0.5) @ rotation.T * 0.6 + 0.5  # roll + zoom out
    moved[:, 2] *= 0.6
    changed = expression_features(moved, 640, 640)
    names = {n: i for i, n in enumerate(EXPRESSION_FEATURES)}
    for name in ("mouth_open", "mouth_width", "lip_corner_raise_left", "eye_open_right",
                 "brow_raise_left", "brow_inner_gap", "nose_to_chin"):
        assert changed[names[name]] == pytest.approx(base[names[name]], abs=1e-4), name
    # image y points down, so a rotation by +20 degrees in image coordinates rolls by -20
    assert changed[names["head_roll_deg"]] - base[names["head_roll_deg"]] == pytest.approx(
        -20.0, abs=1e-3)
    assert changed[names["face_scale"]] == pytest.approx(0.6 * base[names["face_scale"]], rel=1e-4)


def test_resample_to_bins_averages_equal_time_spans():
    frames = np.arange(12, dtype=np.float32)[:, None]
    assert resample_to_bins(frames, 4)[:, 0].tolist() == [1.0, 4.0, 7.0, 10.0]
    short = resample_to_bins(frames[:2], 4)
    assert short.shape == (4, 1) and short[0, 0] == 0 and short[-1, 0] == 1


def test_normalisation_keeps_faceless_frames_zero_and_the_flag():
    rng = np.random.default_rng(0)
    vision = rng.normal(3.0, 2.0, size=(10, 5)).astype(np.float32)
    vision[:, 0] = 1.0
    vision[[2, 7]] = 0.0  # no face
    audio = rng.normal(-1.0, 4.0, size=(30, 3)).astype(np.float32)
    stats = normalization_statistics([audio], [vision])
    config = ExtractorConfig()
    a, v = finalize_clip(audio, vision, config, stats)
    assert np.allclose(a.mean(0), 0, atol=1e-5) and np.allclose(a.std(0), 1, atol=1e-4)
    assert np.all(v[[2, 7]] == 0) and v[:, 0].tolist() == vision[:, 0].tolist()
    face_rows = v[vision[:, 0] == 1][:, 1:]
    assert np.allclose(face_rows.mean(0), 0, atol=1e-5)
    aligned = finalize_clip(audio, vision, config.model_copy(update={"alignment": "fixed",
                                                                     "aligned_length": 6}),
                            stats)
    assert aligned[0].shape == (6, 3) and aligned[1].shape == (6, 5)


# -- a whole folder ---------------------------------------------------------------------------

def _write_label_csv(folder, rows):
    with (folder / "label.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip_id", "text", "label", "mode"])
        writer.writerows(rows)


def test_folder_extraction_reports_failures_and_reuses_the_cache(tmp_path, mosi_raw_dir):
    from msakit.data import load_dataset

    clips = tmp_path / "clips"
    (clips / "vidA").mkdir(parents=True)
    shutil.copy(mosi_raw_dir / WAV, clips / "vidA" / "1.wav")  # MMSA-FET layout
    shutil.copy(mosi_raw_dir / WAV, clips / "vidB_1.wav")  # flat layout
    data = (mosi_raw_dir / MP4).read_bytes()
    (clips / "vidC_1.mp4").write_bytes(data[: len(data) // 3])
    _write_label_csv(clips, [
        ["vidA", "1", WAV_TEXT, "2.4", "train"],
        ["vidB", "1", WAV_TEXT, "", ""],  # no label, no mode: a prediction-only clip -> test
        ["vidC", "1", "broken clip", "-1", "train"],
        ["vidD", "1", "no media file", "0.5", "valid"],
        ["vidA", "2", "bad label", "very positive", "train"],
        ["vidA", "3", "bad mode", "1.0", "holdout"],
    ])
    config = build_extractor_config(overrides=["audio.extractors=[opensmile]"])
    output = tmp_path / "out" / "features.pkl"
    report = extract_folder(clips, output, config, workers=1, progress=False)

    assert report.extracted == 2 and report.reused == 0
    assert report.split_sizes == {"train": 1, "valid": 0, "test": 1}
    with (report.work_dir / "errors.csv").open() as handle:
        errors = {(r["video_id"], r["clip_id"]): r for r in csv.DictReader(handle)}
    assert set(errors) == {("vidC", "1"), ("vidD", "1"), ("vidA", "2"), ("vidA", "3")}
    assert "corrupt" in errors["vidC", "1"]["reason"] and "vidC_1.mp4" in errors["vidC", "1"][
        "reason"]
    assert "no media file for clip vidD/1" in errors["vidD", "1"]["reason"]
    assert "'very positive'" in errors["vidA", "2"]["reason"]
    assert "'holdout'" in errors["vidA", "3"]["reason"]

    import pickle

    with output.open("rb") as handle:
        raw = pickle.load(handle)
    assert raw["test"]["id"].tolist() == ["vidB$_$1"]
    assert math.isnan(raw["test"]["regression_labels"][0])
    assert raw["train"]["audio"].shape[2] == 25 and raw["train"]["text_bert"].shape == (1, 3, 50)

    # labelled clips only: the data layer reads the file and exposes the extractor record
    _write_label_csv(clips, [["vidA", "1", WAV_TEXT, "2.4", "train"],
                             ["vidB", "1", "it was fine", "-0.5", "test"]])
    report = extract_folder(clips, output, config, workers=1, progress=False)
    assert report.reused == 1 and report.extracted == 1  # vidB's transcript changed
    dataset = load_dataset(output)
    assert dataset.extractor["tool"] == "msakit.extract"
    assert dataset.extractor["config"]["audio"]["extractors"] == ["opensmile"]
    assert dataset.feature_dims == {"audio": 25, "vision": len(EXPRESSION_FEATURES)}
    assert dataset.split("train").texts == [WAV_TEXT]
    assert dataset.split("test").labels.tolist() == [-0.5]


def test_label_csv_without_required_columns_is_refused(tmp_path):
    (tmp_path / "label.csv").write_text("name,text\nx,hello\n")
    with pytest.raises(ExtractionError, match=r"missing column\(s\) \['video_id', 'clip_id'\]"):
        extract_folder(tmp_path, tmp_path / "out.pkl", progress=False)


def test_speech_recognition_is_offline_and_flagged(mosi_raw_dir):
    pytest.importorskip("pocketsphinx")
    config = build_extractor_config(overrides=["text.asr=true", "audio.extractors=[opensmile]"])
    features = ClipFeatureExtractor(config).extract(mosi_raw_dir / WAV)
    assert features.text_source == "asr" and "good" in features.text.split()
    assert any("pocketsphinx" in w for w in features.warnings)


def _remux(source, target, gray_video: bool):
    """Write ``target`` from the real mp4: its video stream only, or gray frames + its audio."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        if gray_video:
            audio = out.add_stream_from_template(inp.streams.audio[0])
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
            gray = np.full((120, 160, 3), 128, np.uint8)
            for _ in range(20):
                for packet in video.encode(av.VideoFrame.from_ndarray(gray, format="rgb24")):
                    out.mux(packet)
            for packet in video.encode():
                out.mux(packet)
            streams = [(inp.streams.audio[0], audio)]
        else:
            streams = [(inp.streams.video[0], out.add_stream_from_template(inp.streams.video[0]))]
        for source_stream, target_stream in streams:
            for packet in inp.demux(source_stream):
                if packet.dts is not None:
                    packet.stream = target_stream
                    out.mux(packet)


def test_video_without_audio_track_is_refused(tmp_path, mosi_raw_dir, extractor):
    silent = tmp_path / "silent_video.mp4"
    _remux(mosi_raw_dir / MP4, silent, gray_video=False)
    with pytest.raises(ExtractionError, match=r"silent_video\.mp4: the file has no audio track"):
        extractor.extract(silent, "some text")


def test_video_without_any_face_is_kept_marked_or_refused_when_strict(tmp_path, mosi_raw_dir):
    faceless = tmp_path / "faceless.mp4"
    _remux(mosi_raw_dir / MP4, faceless, gray_video=True)
    config = build_extractor_config(overrides=["audio.extractors=[opensmile]"])
    features = ClipFeatureExtractor(config).extract(faceless, "some text")
    assert features.vision.shape == (20, len(EXPRESSION_FEATURES))
    assert not features.vision.any() and features.info["face_frames"] == 0
    assert features.warnings == [
        "no face found in any of the 20 video frames; vision rows are zeros with face_present=0"]
    with pytest.raises(ExtractionError, match=r"faceless\.mp4: no face found in any of the 20"):
        ClipFeatureExtractor(config, strict=True).extract(faceless, "some text")


def test_unreadable_label_csv_is_refused(tmp_path):
    (tmp_path / "label.csv").write_bytes(b"video_id,clip_id\n\xff\xfe\x00garbage\n")
    with pytest.raises(ExtractionError, match=r"label\.csv: not a UTF-8 text file"):
        extract_folder(tmp_path, tmp_path / "out.pkl", progress=False)
