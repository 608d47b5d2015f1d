"""Video input and output through OpenCV's FFmpeg reader and writer: frames as images for the one
inference loop (one JSON line per kept frame, with ``frame`` and ``time_s``), annotated videos out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rcnn_cli.data.inputs import ImageInput
from rcnn_cli.errors import ImageError, UserError

__all__ = ["VIDEO_EXTENSIONS", "is_video", "VideoFrames", "VideoSink"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoFrames:
    """Every ``every``-th frame of a video, decoded in order: ``inputs`` (one :class:`ImageInput`
    per kept frame, id ``<stem>_f<frame>``, meta ``frame``/``time_s``) and a mapping id -> RGB image
    that reads the file sequentially (the inference loop asks for the frames in order)."""

    def __init__(self, path: str | os.PathLike, every: int = 1) -> None:
        import cv2

        if every < 1:
            raise UserError(f"--every must be at least 1 (got {every})")
        self.path, self.every = Path(path), int(every)
        if not self.path.is_file():
            raise UserError(f"{self.path}: video file not found")
        self.cap = cv2.VideoCapture(str(self.path))
        if not self.cap.isOpened():
            raise UserError(f"{self.path}: cannot open the video (not a video OpenCV's FFmpeg reader decodes)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS)) or 25.0
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.inputs = [ImageInput(f"{self.path.stem}_f{i:06d}", self.path, {"frame": i, "time_s": round(i / self.fps, 4)})
                       for i in range(0, max(count, 0), self.every)]
        self._next, self._ids = 0, {inp.image_id: inp.meta["frame"] for inp in self.inputs}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._ids

    def __getitem__(self, image_id: str) -> Any:
        from PIL import Image

        want = self._ids[image_id]
        frame = None
        while self._next <= want:
            ok, frame = self.cap.read()
            self._next += 1
            if not ok:
                raise ImageError(f"{self.path}: frame {want} could not be decoded")
        if frame is None:
            raise ImageError(f"{self.path}: frame {want} was asked for out of order")
        return Image.fromarray(np.ascontiguousarray(frame[:, :, ::-1]), "RGB")

    def close(self) -> None:
        self.cap.release()


class VideoSink:
    """Annotated frames written as a video (``mp4v``), atomically: the file appears when closed."""

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path, self.fps, self.writer, self.tmp = Path(path), float(fps), None, None

    def write(self, image: Any) -> None:
        import cv2

        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, image.size)
            if not self.writer.isOpened():
                raise UserError(f"--draw {self.path}: OpenCV cannot write this video format (use .mp4)")
        self.writer.write(np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)
