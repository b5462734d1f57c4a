"""Registered model versions for serving tests: untrained taggers of the default architecture.

Serving neither knows nor cares how good a version is; an untrained tagger has the
same size, preprocessing and compute as a trained one and takes a second to make.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from components.model.preprocess import Preprocessing
from components.model.registry import Registry
from components.model.tagger import TaggerSpec, build_tagger, save_tagger

LABELS = ("food", "pets", "fitness", "travel")


def register_untrained(registry: Registry, seed: int, labels: tuple[str, ...] = LABELS, arch: str = "resnet18") -> int:
    """A new registered version with random weights (seeded), its gate marked passed."""
    torch.manual_seed(seed)
    tagger = build_tagger(TaggerSpec(arch, labels, Preprocessing(image_size=32, resize=36)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tagger(tagger, Path(tmp) / "tagger")
        run_id = registry.start_run(f"untrained-{seed}", {"seed": seed}, {"snapshot": "none"})
        version = registry.register(run_id, folder, snapshot="none")
        registry.finish_run(run_id)
    registry.client.set_model_version_tag(registry.model_name, str(version), "gate", "passed")
    return version
