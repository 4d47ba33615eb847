"""The image encoder path a user's model takes: a tiny random ViT saved to a temporary folder."""

import numpy as np
import pytest

from sdt_ray.errors import ConfigError
from tests.helpers.media import save_tiny_vit
from sdt_ray.features.visual import VisualEncoder, input_size, resolve_visual_model


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


def test_clip_vector_is_the_mean_of_its_frame_embeddings(tiny_vit):
    encoder = VisualEncoder(tiny_vit, batch_size=2, device="cpu")  # 2 frames per forward: clips straddle batches
    assert encoder.dim == 24 and input_size(encoder.processor) == 32
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    got = encoder([a, b])  # (2, 24)
    per_frame = encoder._embed(list(a) + list(b))  # (4, 24)
    assert got.shape == (2, 24)
    np.testing.assert_allclose(got[0], per_frame[:3].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(got[1], per_frame[3], atol=1e-5)


def test_visual_model_must_be_named_and_local(tmp_path):
    with pytest.raises(ConfigError, match="needs --visual-model"):
        resolve_visual_model(None)
    with pytest.raises(ConfigError, match="never downloads"):
        VisualEncoder(str(tmp_path / "no-such-model"))


def test_random_vit_alias_is_built_once_and_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = resolve_visual_model("random-vit")
    assert first.startswith(str(tmp_path))
    image = [np.full((64, 64, 3), 128, np.uint8)]
    one = VisualEncoder("random-vit", device="cpu")._embed(image)
    assert resolve_visual_model("random-vit") == first
    import shutil

    shutil.rmtree(first)
    two = VisualEncoder("random-vit", device="cpu")._embed(image)  # rebuilt from the seed
    np.testing.assert_array_equal(one, two)
