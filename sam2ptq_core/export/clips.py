"""Clips for SAM2's video path, torch-free: a video file decoded with PyAV (FFmpeg's libraries in a wheel, the
``'.[video]'`` extra) or a folder of frames (images sorted by name), read one frame at a time."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..sam2.images import IMAGE_SUFFIXES, load_rgb

__all__ = ["VideoSource", "read_frames", "frame_files", "open_av"]


@dataclass(frozen=True)
class VideoSource:
    """A clip (a video file PyAV can decode) or a folder of frames (images sorted by name)."""
    path: Path
    files: tuple[Path, ...] = ()     # frames of a folder; empty for a video file
    fps: float = 24.0
    count: int | None = None         # frames, when the container says
    size: tuple[int, int] = (0, 0)   # (width, height) of the first frame

    def frames(self, limit: int | None = None) -> Iterator[Image.Image]:
        """RGB frames in order, at most ``limit``; a frame that does not decode is a ValueError naming it."""
        if self.files:
            for f in self.files[:limit]:
                try:
                    im = load_rgb(f)
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    raise ValueError(f"--video {self.path}: frame {f.name} cannot be read "
                                     f"({str(e).splitlines()[0]})") from None
                yield im
            return
        av = open_av()
        i = 0
        try:
            with av.open(str(self.path)) as c:
                for fr in c.decode(video=0):
                    if limit is not None and i >= limit:
                        break
                    im = fr.to_image().convert("RGB")
                    i += 1
                    yield im
        except av.error.FFmpegError as e:
            raise ValueError(f"--video {self.path}: frame {i} cannot be decoded ({e.strerror or type(e).__name__})"
                             ) from None


def open_av():
    """PyAV, or a ValueError naming the extra that installs it."""
    try:
        import av
    except ImportError:
        raise ValueError("reading and writing video files needs PyAV: pip install -e '.[video]'") from None
    return av


def frame_files(folder: Path) -> tuple[Path, ...]:
    """The frames of a folder: its images (by suffix, not recursive), sorted by name."""
    return tuple(sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))


def read_frames(path: str | Path) -> VideoSource:
    """Open ``path`` (a video file or a folder of frames) and read its first frame; ValueError (one line naming
    the fix) when it does not exist, is empty, or cannot be decoded."""
    p = Path(path)
    if p.is_dir():
        files = frame_files(p)
        if not files:
            raise ValueError(f"--video {path}: the folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "pass a video file or a folder of images named in frame order")
        try:
            first = load_rgb(files[0])
        except (OSError, ValueError) as e:
            raise ValueError(f"--video {path}: {files[0].name} cannot be read ({str(e).splitlines()[0]})") from None
        return VideoSource(p, files, 24.0, len(files), first.size)
    if not p.is_file():
        raise ValueError(f"--video {path} does not exist; pass a video file (mp4, avi, mkv, …) or a folder of frames")
    av = open_av()
    try:
        with av.open(str(p)) as c:
            if not c.streams.video:
                raise ValueError(f"--video {path} has no video stream; pass a video file or a folder of frames")
            s = c.streams.video[0]
            first = next(c.decode(video=0), None)
            fps = float(s.average_rate) if s.average_rate else 24.0
            count = s.frames or None
    except av.error.FFmpegError as e:
        raise ValueError(f"--video {path} cannot be decoded ({e.strerror or type(e).__name__}); pass a video file "
                         "FFmpeg reads (mp4, avi, mkv, …) or a folder of frames") from None
    if first is None:
        raise ValueError(f"--video {path} holds no frames; pass another clip")
    return VideoSource(p, (), fps, count, (first.width, first.height))
