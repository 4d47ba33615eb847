"""Visual features: N frames per utterance, the largest face cropped, a transformers
image encoder, mean-pooled over frames.

Two stages, so that CPU work and model work scale separately on Ray Data:
- FrameStage (CPU): decode N frames, crop the largest face (OpenCV's bundled
  Haar cascade; the centre square when no face is found), resize to the model's
  input size. Adds `_frames`: the crops as uint8 bytes of shape (n, S, S, 3).
- VisualFeatureStage (model, GPU when asked): `_frames` -> `visual_features`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from .local_models import load_pretrained, on_device, resolve_local
from .media import INTERNAL_ERROR, MediaError, decode_frames, segments

RANDOM_VIT = "random-vit"  # alias: a fixed-seed, untrained tiny ViT (random features) for demos and tests
DEFAULT_FRAMES = 8  # frames sampled per utterance
FACE_MARGIN = 0.25  # the face box grows by this fraction on each side: hair, chin and brows carry expression
DETECT_SIDE = 240  # pixels: faces are searched on a copy of the frame at most this high (or wide)


def resolve_visual_model(name_or_path: str | None) -> str:
    """A local folder, the `random-vit` alias, or an id the user's own HF cache resolves."""
    if not name_or_path:
        raise ConfigError(
            "visual extraction needs --visual-model: a local transformers image model folder, an id in your "
            f"own Hugging Face cache, or '{RANDOM_VIT}' (untrained, random features; for trying the pipeline)"
        )
    if name_or_path == RANDOM_VIT:
        return str(_random_vit())
    return resolve_local(name_or_path)


def _random_vit() -> Path:
    """Build the alias's model once per machine (seeded, so identical everywhere); nothing is downloaded."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdt-ray" / "random-vit-v1"
    if (cache / "config.json").exists():
        return cache
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ViTModel(config, add_pooling_layer=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="random-vit-", dir=cache.parent))
    model.save_pretrained(staging)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(staging)
    try:
        staging.rename(cache)  # atomic: concurrent actors on one node race harmlessly
    except OSError:
        pass
    return cache


def _load_processor(path: str, name: str | None):
    from transformers import AutoImageProcessor

    # The PIL backend: the torchvision one needs torchvision, which sdt-ray does not install.
    return load_pretrained("visual model", name, path, AutoImageProcessor, backend="pil")


def input_size(processor) -> int:
    """The square side (pixels) the image processor feeds the model."""
    for attribute in ("crop_size", "size"):
        size = getattr(processor, attribute, None)
        if isinstance(size, int):
            return size
        for key in ("height", "shortest_edge"):
            # transformers 5 gives a SizeDict (attributes), older releases a plain dict.
            side = getattr(size, key, None) or (size.get(key) if isinstance(size, dict) else None)
            if side:
                return int(side)
    return 224


class FaceCropper:
    """RGB frame (H, W, 3) uint8 -> the largest face as a (S, S, 3) uint8 square."""

    def __init__(self, side: int):
        import cv2

        cv2.setNumThreads(1)  # one core per actor: Ray supplies the parallelism
        cascade = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self.detector = cv2.CascadeClassifier(cascade)
        if self.detector.empty():
            raise ConfigError(f"OpenCV's Haar cascade is missing at {cascade} (opencv-python-headless 4.x ships it)")
        self.side = side
        self.faces_found = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        height, width = frame.shape[:2]
        box = self._largest_face(frame)
        if box is not None:
            x, y, w, h = box
            self.faces_found += 1
            half = int(max(w, h) * (0.5 + FACE_MARGIN))
            cx, cy = int(x + w / 2), int(y + h / 2)
        else:
            half = min(height, width) // 2
            cx, cy = width // 2, height // 2
        top, left = max(0, cy - half), max(0, cx - half)
        crop = frame[top : min(height, cy + half), left : min(width, cx + half)]
        return cv2.resize(crop, (self.side, self.side), interpolation=cv2.INTER_AREA)

    def _largest_face(self, frame: np.ndarray) -> tuple[float, float, float, float] | None:
        """(x, y, w, h) in the frame's pixels, or None. Detection runs on a copy whose short
        side is at most DETECT_SIDE: the cascade's cost grows with pixels, a face in a
        conversation video is large, and 720p frames would otherwise cost ~0.3 s each."""
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, DETECT_SIDE / min(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        smallest = max(24, min(gray.shape) // 5)  # faces under a fifth of the frame are background
        faces = self.detector.detectMultiScale(gray, scaleFactor=1.2, minNeighbors=5, minSize=(smallest, smallest))
        if not len(faces):
            return None
        x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return x / scale, y / scale, w / scale, h / scale


class FrameStage:
    """Rows with `video_uri` in; the same rows with `_frames` (bytes) and `_frame_count` out."""

    def __init__(self, model: str | None, frames: int = DEFAULT_FRAMES):
        path = resolve_visual_model(model)
        self.side = input_size(_load_processor(path, model))
        self.cropper = FaceCropper(self.side)
        self.frames = frames

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..schema import add_errors

        crops: list[bytes | None] = []
        counts: list[int] = []
        errors: list[tuple[str, str] | None] = []
        for segment in segments(batch, "video_uri"):
            try:
                segment.check("video")
                frames = decode_frames(segment.uri, segment.start_s, segment.end_s, self.frames)
                stacked = np.stack([self.cropper(f) for f in frames])  # (n, S, S, 3) uint8
                crops.append(stacked.tobytes())
                counts.append(len(frames))
                errors.append(None)
            except Exception as exc:  # MediaError, or anything odd in one file: that row fails, the job goes on
                crops.append(None)
                counts.append(0)
                errors.append((exc.reason, exc.detail) if isinstance(exc, MediaError) else (INTERNAL_ERROR, f"{segment.uri}: {exc!r}"))
        batch = add_errors(batch, "visual", errors)
        return batch.append_column("_frames", pa.array(crops, pa.binary())).append_column(
            "_frame_count", pa.array(counts, pa.int32())
        )


class VisualEncoder:
    """(n, S, S, 3) uint8 crops -> one (D,) vector: the model's per-frame embedding, mean over frames."""

    def __init__(self, model: str | None, batch_size: int = 64, device: str | None = None):
        from transformers import AutoModel

        path = resolve_visual_model(model)
        self.processor = _load_processor(path, model)
        self.model, self.device = on_device(load_pretrained("visual model", model, path, AutoModel), device)
        self.batch_size = batch_size  # frames per forward pass
        self.dim = self._probe_dim()
        self.name = path

    def _probe_dim(self) -> int:
        side = input_size(self.processor)
        return int(self._embed([np.zeros((side, side, 3), np.uint8)]).shape[1])

    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        """(N frames) -> (N, D) float32."""
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            if hasattr(self.model, "get_image_features"):  # CLIP-style two-tower models
                out = self.model.get_image_features(**inputs)
                hidden = out if torch.is_tensor(out) else out.pooler_output
            else:
                hidden = self.model(**inputs).last_hidden_state
            if hidden.dim() == 3:  # (N, tokens, D): mean over tokens
                hidden = hidden.mean(dim=1)
            elif hidden.dim() == 4:  # (N, C, H, W) from convolutional models: mean over space
                hidden = hidden.mean(dim=(2, 3))
        return hidden.float().cpu().numpy()

    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        """clips: each (n_i, S, S, 3) -> (len(clips), D), frames batched across clips."""
        frames = [frame for clip in clips for frame in clip]
        owners = np.repeat(np.arange(len(clips)), [len(c) for c in clips])  # (total frames,)
        embedded = np.concatenate(
            [self._embed(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        ) if frames else np.zeros((0, self.dim), np.float32)  # (total frames, D)
        sums = np.zeros((len(clips), self.dim), np.float64)
        np.add.at(sums, owners, embedded)
        return (sums / np.maximum(1, np.bincount(owners, minlength=len(clips)))[:, None]).astype(np.float32)


class VisualFeatureStage:
    """`_frames` -> `visual_features`; rows whose frames failed keep a null vector (the error is already recorded)."""

    def __init__(self, model: str | None, batch_size: int = 64, device: str | None = None, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.encoder = VisualEncoder(model, batch_size=batch_size, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..schema import add_feature_column

        side = input_size(self.encoder.processor)
        raw = batch.column("_frames").to_pylist()
        counts = batch.column("_frame_count").to_pylist()
        rows = [i for i, r in enumerate(raw) if r is not None]
        clips = [np.frombuffer(raw[i], np.uint8).reshape(counts[i], side, side, 3) for i in rows]
        vectors = np.full((batch.num_rows, self.encoder.dim), np.nan, dtype=np.float32)
        if rows:
            vectors[rows] = self.encoder(clips)
        # Failed rows already carry their reason from FrameStage: only the vector is nulled here.
        missing = [None if r is not None else ("no_frames", "") for r in raw]
        batch = batch.drop_columns(["_frames", "_frame_count"])
        return add_feature_column(batch, "visual", vectors, missing, record=False)
