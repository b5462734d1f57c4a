"""The tagger factory, its preprocessing, and the data helpers training builds on."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from components.errors import ConfigError
from components.model.datasets import SplitShares, reservoir_sample
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger, extend_labels, load_tagger, save_tagger

pytestmark = pytest.mark.unit

SMALL = Preprocessing(image_size=32, resize=36)
LABELS = ("cars", "food", "pets")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"])
def test_every_architecture_gives_logits_per_label_and_a_penultimate_embedding(arch: str) -> None:
    torch.manual_seed(0)
    tagger = build_tagger(TaggerSpec(arch, LABELS, SMALL)).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, emb = tagger.forward_with_embeddings(x)
    expected_dim = {"resnet18": 512, "mobilenet_v3_small": 1024, "mobilenet_v3_large": 1280, "efficientnet_b0": 1280}
    assert logits.shape == (2, 3)
    assert emb.shape == (2, expected_dim[arch]) == (2, tagger.embedding_dim)
    assert torch.allclose(tagger.head(emb), logits, atol=1e-5)  # the embedding is what the head reads


def test_unknown_architecture_and_empty_labels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'vgg11'"):
        build_tagger(TaggerSpec("vgg11", LABELS))
    with pytest.raises(ConfigError, match="at least one label"):
        build_tagger(TaggerSpec("resnet18", ()))


def test_backbone_starts_from_a_local_torchvision_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet_like = torchvision.models.mobilenet_v2()  # 1000-class head, as the shipped ImageNet file has
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(imagenet_like.state_dict(), path)
    tagger = build_tagger(TaggerSpec("mobilenet_v2", LABELS, SMALL), weights=path)
    ours = tagger.backbone.state_dict()
    theirs = imagenet_like.state_dict()
    assert torch.equal(ours["features.0.0.weight"], theirs["features.0.0.weight"])
    assert torch.equal(ours["features.18.1.running_var"], theirs["features.18.1.running_var"])
    assert tagger.head.out_features == 3  # the ImageNet classifier was dropped, not loaded


def test_weights_for_another_architecture_or_not_weights_at_all_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit mobilenet_v2"):
        build_tagger(TaggerSpec("mobilenet_v2", LABELS), weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="is not a torch state dict"):
        build_tagger(TaggerSpec("resnet18", LABELS), weights=junk)
    with pytest.raises(ConfigError, match="does not exist"):
        build_tagger(TaggerSpec("resnet18", LABELS), weights=tmp_path / "missing.pth")


def test_extending_the_head_keeps_what_old_classes_learned() -> None:
    torch.manual_seed(2)
    tagger = build_tagger(TaggerSpec("resnet18", LABELS, SMALL)).eval()
    grown = extend_labels(tagger, (*LABELS, "meme")).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        old, new = tagger(x), grown(x)
    assert grown.labels == ("cars", "food", "pets", "meme")
    assert new.shape == (4, 4)
    assert torch.allclose(new[:, :3], old, atol=1e-6)  # old rows untouched
    with pytest.raises(ConfigError, match="cannot drop labels"):
        extend_labels(tagger, ("cars", "food"))
    with pytest.raises(ConfigError, match="must come after"):
        extend_labels(tagger, ("meme", *LABELS))


def test_a_saved_tagger_loads_back_with_identical_outputs_and_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(3)
    pre = Preprocessing(image_size=40, resize=48, jitter=0.2)
    tagger = build_tagger(TaggerSpec("mobilenet_v3_small", LABELS, pre)).eval()
    loaded = load_tagger(save_tagger(tagger, tmp_path / "t"))
    assert loaded.spec == tagger.spec
    image = Image.new("RGB", (90, 60), (200, 40, 10))
    a, b = Predictor(tagger).predict([image]), Predictor(loaded).predict([image])
    assert torch.equal(torch.from_numpy(a.probabilities), torch.from_numpy(b.probabilities))
    assert a.embeddings.shape == (1, 1024)
    with pytest.raises(ConfigError, match="not a saved tagger"):
        load_tagger(tmp_path)


def test_preprocessing_base_evaluation_and_training_shapes_and_determinism() -> None:
    pre = Preprocessing(image_size=32, resize=36)
    base = pre.base(Image.new("RGB", (120, 80), (10, 200, 30)))
    assert base.shape == (3, 36, 36) and base.dtype == torch.uint8
    batch = torch.randint(0, 256, (5, 3, 36, 36), dtype=torch.uint8)
    assert pre.evaluation(batch).shape == (5, 3, 32, 32)
    a = pre.training(batch, torch.Generator().manual_seed(4))
    b = pre.training(batch, torch.Generator().manual_seed(4))
    c = pre.training(batch, torch.Generator().manual_seed(5))
    assert a.shape == (5, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_full_crop_without_jitter_is_the_evaluation_input() -> None:
    # the batched random resized crop samples the same pixels torchvision would for the whole image
    pre = Preprocessing(image_size=36, resize=36, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=0.0)
    batch = torch.randint(0, 256, (3, 3, 36, 36), dtype=torch.uint8)
    trained = pre.training(batch, torch.Generator().manual_seed(0))
    evaluated = pre.evaluation(batch)
    unflipped = torch.isclose(trained, evaluated, atol=1e-4).flatten(1).all(1)
    flipped = torch.isclose(trained, evaluated.flip(-1), atol=1e-4).flatten(1).all(1)
    assert (unflipped | flipped).all()


def test_the_split_is_stable_and_near_its_shares() -> None:
    shares = SplitShares(test=0.15, val=0.10)
    ids = [f"s7-d{d:03d}-{i:05d}" for d in range(10) for i in range(1000)]
    counts = Counter(shares.of(p) for p in ids)
    assert abs(counts["test"] / len(ids) - 0.15) < 0.01
    assert abs(counts["val"] / len(ids) - 0.10) < 0.01
    assert [shares.of(p) for p in ids[:50]] == [SplitShares().of(p) for p in ids[:50]]  # a pure function of the id


def test_reservoir_sampling_is_uniform_over_the_stream() -> None:
    rng = random.Random(0)
    hits = Counter()
    for _ in range(4000):
        hits.update(reservoir_sample(range(20), 5, rng))
    assert all(abs(hits[i] / 4000 - 5 / 20) < 0.03 for i in range(20))  # each item kept with probability k/n
    assert sorted(reservoir_sample(range(3), 5, rng)) == [0, 1, 2]
    assert reservoir_sample(iter(range(100)), 0, rng) == []
