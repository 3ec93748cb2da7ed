"""Fixtures that write real encoded videos with PyAV into a temp dir.

Frame i of a test video is a horizontal gray ramp (0..15) plus a brightness of `5 * i`, so the mean brightness
of a decoded frame tells which frame it is, and the ramp tells which part of the frame a crop came from.
With `noise`, zero-mean pixel noise (seeded by i) makes the coded frames large, as real footage is.
"""
import av
import numpy as np
import pytest

CODECS = {  # name -> (codec, container extension, pixel format): HMDB51-era AVI codecs and H.264 mp4
    "h264": ("libx264", "mp4", "yuv420p"),
    "mpeg4": ("mpeg4", "avi", "yuv420p"),
    "msmpeg4": ("msmpeg4v2", "avi", "yuv420p"),
    "mjpeg": ("mjpeg", "avi", "yuvj420p"),
    "cinepak": ("cinepak", "avi", "rgb24"),
    "av1": ("libsvtav1", "mkv", "yuv420p"),  # decord's FFmpeg cannot decode it; PyAV's can
    "h264-ts": ("libx264", "ts", "yuv420p"),  # MPEG-TS: timestamps not starting at zero
}


def frame_image(i, height, width, noise=0):
    ramp = np.linspace(0, 15, width, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(5 * i + ramp, (height, width, 3))
    if noise:
        image = image + np.random.default_rng(i).integers(-noise, noise + 1, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8)


def write_test_video(path, num_frames=48, height=72, width=128, fps=25, codec="h264", gop=12, noise=0):
    name, _, pix_fmt = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if name == "libx264":
            stream.options = {"g": str(gop), "threads": "1", "x264-params": "mbtree=0"}
        else:
            stream.bit_rate = 8_000_000
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, height, width, noise), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def frame_numbers(frames):
    """The frame index each decoded frame [T, H, W, 3] shows (inverse of frame_image's brightness)."""
    return [round((float(f.float().mean()) - 7.5) / 5) for f in frames]


@pytest.fixture
def video_factory(tmp_path):
    def make(name="v", ext=None, **kw):
        ext = ext or CODECS[kw.get("codec", "h264")][1]
        return str(write_test_video(tmp_path / f"{name}.{ext}", **kw))

    return make
