"""The endpoint's own Prometheus metrics, exported next to Serve's by Ray's metrics agent (prefix `ray_`)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
LOAD_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]


class GeneratorMetrics:
    """Created in each generator replica (Ray metrics are per process)."""

    def __init__(self) -> None:
        self.images = Counter("fsg_images_generated", description="Images generated, per model.", tag_keys=("model",))
        self.load_seconds = Histogram("fsg_model_load_seconds", description="Seconds to read and build a model.", boundaries=LOAD_BOUNDARIES, tag_keys=("model",))
        self.batch_images = Histogram("fsg_batch_images", description="Images in one batched forward (several requests share one).", boundaries=BATCH_BOUNDARIES)
        self.load_failures = Counter("fsg_model_load_failures", description="Failed model loads, per model.", tag_keys=("model",))
