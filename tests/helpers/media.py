"""Small media files made on the spot for tests: WAV through the standard library,
video through PyAV's encoders (mpeg4, which every FFmpeg build has)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def voice_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A pitched, amplitude-modulated buzz with noise: enough for openSMILE's voicing."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    buzz = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.2 * buzz * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, channels: list[np.ndarray], rate: int) -> Path:
    """Float signals in [-1, 1], one per channel, as 16-bit PCM."""
    pcm = (np.clip(np.stack(channels, axis=1), -1, 1) * 32767).astype("<i2")  # (T, C)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(len(channels))
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10, audio: np.ndarray | None = None, rate: int = 16000) -> Path:
    """RGB uint8 frames (H, W, 3) as MPEG-4 video, with an optional mono audio track (AAC)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="mono") if audio is not None else None
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            step = 1024
            for start in range(0, len(audio), step):
                chunk = audio[start : start + step].reshape(1, -1).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def gray_frames(count: int, size: int = 64) -> list[np.ndarray]:
    """Frame i is uniformly 10 * i: the decoded brightness tells which frame came back."""
    return [np.full((size, size, 3), 10 * i + 5, dtype=np.uint8) for i in range(count)]


def save_tiny_vit(folder: Path, side: int = 32) -> str:
    """A randomly initialised ViT and its image processor, as a user's model folder looks."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=side, patch_size=16, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return str(folder)


def save_tiny_speech_model(folder: Path) -> str:
    """A randomly initialised wav2vec2 and its feature extractor, as a user's model folder looks."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=20, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True).save_pretrained(folder)
    return str(folder)


TONE_RATE = 16_000


def tone_call(path, spans, seconds=6.0, channels=2):
    """A WAV with a 300 Hz tone on `channel` over each (channel, start_s, end_s) span, silence elsewhere."""
    audio = np.zeros((int(seconds * TONE_RATE), channels), dtype=np.float32)
    for channel, start, end in spans:
        t = np.arange(int(start * TONE_RATE), int(end * TONE_RATE))
        audio[t, channel] = 0.3 * np.sin(2 * np.pi * 300 * t / TONE_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(TONE_RATE)
        out.writeframes((audio * 32767).astype("<i2").tobytes())
    return path


