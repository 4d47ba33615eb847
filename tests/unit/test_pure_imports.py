"""The model and the loss are pure PyTorch, and so are the text classifier, its card and the
driver-side preparation and evaluation: they import with `ray` blocked."""

import subprocess
import sys

BLOCK_RAY = """
import sys
class BlockRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is blocked in this test")
sys.meta_path.insert(0, BlockRay())
import sdt_ray.model, sdt_ray.losses, sdt_ray.collate, sdt_ray.engine, sdt_ray.config
import sdt_ray.text_classifier, sdt_ray.text_card, sdt_ray.training_data, sdt_ray.evaluate
assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules), "ray was imported"
try:
    import ray
except ImportError:
    print("blocked")
"""


def test_model_and_losses_import_without_ray():
    done = subprocess.run([sys.executable, "-c", BLOCK_RAY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"
