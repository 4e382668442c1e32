"""Video files: round trips, linspace sampling and clear errors for bad files."""

import numpy as np
import pytest

from opensora_lib.data.video_io import VideoFileError, probe_video, read_video, sample_indices, write_video


def _frames(t=9, h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[:] = rng.integers(0, 255, size=3, dtype=np.uint8)
    for i in range(t):  # a moving saturated square: hard for 4:2:0 chroma, trivial for lossless RGB
        frames[i, 8:20, 4 + 2 * i:16 + 2 * i] = (230, 20, 30)
    frames += rng.integers(0, 20, size=frames.shape, dtype=np.uint8)
    return frames


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_lossless_mp4_round_trip_is_exact(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=24)
    assert np.array_equal(read_video(path), frames)
    info = probe_video(path)
    assert (info["num_frames"], info["height"], info["width"]) == (9, 32, 48)
    assert info["fps"] == pytest.approx(24)


def test_playable_mp4_is_h264_yuv420_and_close(tmp_path):
    import av

    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=12, lossless=False, crf=10)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    decoded = read_video(path)
    assert decoded.shape == frames.shape
    assert psnr(decoded, frames) > 25  # chroma subsampling of a saturated square costs dB; still a close copy


def test_gif_and_png_round_trip(tmp_path):
    frames = _frames(t=4)
    gif = read_video(write_video(tmp_path / "a.gif", frames, fps=8))
    assert gif.shape == frames.shape and psnr(gif, frames) > 20  # palette quantisation
    png = read_video(write_video(tmp_path / "a.png", frames[:1]))
    assert np.array_equal(png, frames[:1])
    with pytest.raises(ValueError, match="one frame"):
        write_video(tmp_path / "b.png", frames)


def test_linspace_sampling_takes_evenly_spaced_frames(tmp_path):
    frames = _frames(t=17)
    path = write_video(tmp_path / "clip.mp4", frames)
    assert sample_indices(17, 5).tolist() == [0, 4, 8, 12, 16]
    assert np.array_equal(read_video(path, num_frames=5), frames[[0, 4, 8, 12, 16]])
    assert np.array_equal(read_video(path, indices=[3, 1]), frames[[3, 1]])
    with pytest.raises(VideoFileError, match="clip.mp4"):
        read_video(path, indices=[17])


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "truncated_faststart", "directory"])
def test_bad_files_raise_an_error_naming_the_file(tmp_path, kind):
    import av

    path = tmp_path / f"bad_{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":  # index (moov) at the end: cut off
        good = write_video(tmp_path / "good.mp4", _frames(t=30)).read_bytes()
        path.write_bytes(good[: len(good) // 3])
    elif kind == "truncated_faststart":  # index at the front: opens, but frames are missing
        with av.open(str(tmp_path / "fs.mp4"), "w", options={"movflags": "faststart"}) as c:
            s = c.add_stream("libx264rgb", rate=24)
            s.width, s.height, s.pix_fmt = 48, 32, "rgb24"
            for f in _frames(t=30):
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        good = (tmp_path / "fs.mp4").read_bytes()
        path.write_bytes(good[: int(len(good) * 0.6)])
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(VideoFileError) as info:
        read_video(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_probe_rejects_garbage_naming_the_file(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoFileError, match="noise.mp4"):
        probe_video(path)


def test_write_rejects_wrong_dtype_or_shape(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8)[..., None])


def test_lossy_mp4_converts_colours_as_ffmpeg_does_at_any_even_size(tmp_path):
    """write_video(lossless=False) converts RGB -> yuv420p itself (PyAV's conversion is not repeatable); the
    conversion agrees with ffmpeg's within 2 levels on flat colour bands, also where H / 2 is odd (42 rows)."""
    import av

    from opensora_lib.data.video_io import yuv420p_frame

    img = np.zeros((42, 56, 3), np.uint8)  # [H, W, 3]: three colour bands
    img[:, :16], img[:, 16:32], img[:, 32:] = (200, 30, 40), (20, 180, 60), (30, 50, 220)
    ours = yuv420p_frame(img).to_ndarray(format="rgb24").astype(int)
    ffmpeg = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
    assert np.abs(ours - ffmpeg.astype(int)).max() <= 2 and np.abs(ours - img).max() <= 3
    clip = np.repeat(img[None], 3, axis=0)
    a, b = (write_video(tmp_path / f"{k}.mp4", clip, lossless=False) for k in "ab")
    assert a.read_bytes() == b.read_bytes()
    assert read_video(a).shape == clip.shape
