"""The image tagger: a torchvision backbone, a head sized to the label set, and its preprocessing.

A tagger travels as a folder of two files, so evaluation, the registry and serving
rebuild exactly what training used::

    tagger.json   TaggerSpec: architecture, labels, preprocessing, side inputs
    weights.pt    the state dict (loaded with ``weights_only=True``: no pickled code)

Every architecture exposes the penultimate layer as its embedding: the last
``nn.Linear`` of the torchvision model becomes the head, and everything before it
is the backbone.

A fusion tagger (``spec.side`` names feature groups, see ``components.features.side``) also
reads a side vector of stored features. It goes through a small projection and is
concatenated with the image embedding (late fusion); the head scores the
concatenation, which is then the tagger's embedding::

    image (B, 3, H, W) -> backbone -> (B, D_img) --+
                                                   cat -> (B, D_img + SIDE_HIDDEN) -> head -> (B, C)
    side  (B, S)       -> Linear, ReLU -> (B, SIDE_HIDDEN)
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from components.errors import ConfigError
from components.features.side import check_side, side_columns
from components.files import write_atomic
from components.model.preprocess import Preprocessing

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}


@dataclass(frozen=True)
class TaggerSpec:
    """Everything needed to rebuild a tagger around its weights."""

    arch: str
    labels: tuple[str, ...]  # head row i scores labels[i]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    side: tuple[str, ...] = ()  # side input groups (components.features.side); () for an image-only tagger

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TaggerSpec:
        raw = json.loads(text)
        pre = raw["preprocessing"]
        return cls(
            arch=raw["arch"],
            labels=tuple(raw["labels"]),
            preprocessing=Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}),
            side=tuple(raw.get("side", ())),  # taggers saved before fusion existed have none
        )

    @property
    def side_columns(self) -> list[str]:
        return side_columns(self.side, self.labels)


SIDE_HIDDEN = 128  # width of the side vector's projection


class Tagger(nn.Module):
    """backbone (B, 3, H, W) [+ side (B, S)] -> embedding (B, D); head embedding -> logits (B, len(labels))."""

    def __init__(self, spec: TaggerSpec, backbone: nn.Module, image_dim: int):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.image_dim = image_dim
        self.side_net = None
        self.embedding_dim = image_dim
        if spec.side:
            self.side_net = nn.Sequential(nn.Linear(len(spec.side_columns), SIDE_HIDDEN), nn.ReLU())
            self.embedding_dim = image_dim + SIDE_HIDDEN
        self.head = nn.Linear(self.embedding_dim, len(spec.labels))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def side_width(self) -> int:
        """How many side-input columns the tagger reads (0: image only)."""
        return 0 if self.side_net is None else self.side_net[0].in_features

    def embed(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.backbone(x)
        if self.side_net is None:
            return emb
        if side is None:
            raise ConfigError(f"this tagger reads side inputs ({', '.join(self.spec.side)}) beside the image")
        if side.shape != (len(x), self.side_width):
            raise ConfigError(f"side inputs have shape {tuple(side.shape)}, not ({len(x)}, {self.side_width})")
        return torch.cat([emb, self.side_net(side).to(emb.dtype)], 1)

    def forward(self, x: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(x, side))

    def forward_with_embeddings(
        self, x: torch.Tensor, side: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x, side)
        return self.head(emb), emb


def build_tagger(spec: TaggerSpec, weights: Path | None = None) -> Tagger:
    """A tagger for ``spec`` with random weights, or its backbone initialised from a local file.

    ``weights`` is a torchvision state dict for the same architecture (for instance
    the ImageNet ``mobilenet_v2-b0353104.pth``); its classifier is dropped, since the
    head is sized to our labels. Nothing is ever downloaded.
    """
    if spec.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if not spec.labels:
        raise ConfigError("a tagger needs at least one label")
    if check_side(spec.side) != spec.side:
        raise ConfigError(f"side inputs {spec.side} are not in canonical order; build them with check_side")
    net = ARCHITECTURES[spec.arch](weights=None)
    head_name, head = _last_linear(net)
    if weights is not None:
        _load_backbone_weights(net, head_name, weights, spec.arch)
    _replace(net, head_name, nn.Identity())
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # torchvision's MobileNetV3/EfficientNet use momentum 0.01, tuned for long ImageNet runs:
            # after a few short epochs their running statistics still describe the random init and
            # eval-mode accuracy sits at chance. 0.1 (PyTorch's default) tracks a short run.
            m.momentum = 0.1
    return Tagger(spec, net, head.in_features)


def extend_labels(tagger: Tagger, labels: tuple[str, ...]) -> Tagger:
    """The same tagger with its head grown to ``labels``: known rows kept, new rows freshly initialised.

    Continual learning adds the classes a trend brings without throwing away what the
    old rows learned; old labels keep their order, so a row index means the same class.
    A fusion tagger's side columns grow with the labels (one interest share per label):
    columns it knew keep their weights, new ones start at zero, so the grown tagger
    scores the old labels exactly as before.
    """
    missing = [label for label in tagger.labels if label not in labels]
    if missing:
        raise ConfigError(f"cannot drop labels the model knows: {', '.join(missing)}")
    if labels[: len(tagger.labels)] != tagger.labels:
        raise ConfigError("new labels must come after the labels the model knows, in the same order")
    if labels == tagger.labels:
        return tagger
    spec = TaggerSpec(tagger.spec.arch, labels, tagger.spec.preprocessing, tagger.spec.side)
    grown = Tagger(spec, tagger.backbone, tagger.image_dim).to(tagger.head.weight.device)
    old = len(tagger.labels)
    with torch.no_grad():
        if tagger.side_net is not None:
            before = {name: j for j, name in enumerate(tagger.spec.side_columns)}
            layer, was = grown.side_net[0], tagger.side_net[0]
            layer.weight.zero_()
            for j, name in enumerate(spec.side_columns):
                if name in before:
                    layer.weight[:, j] = was.weight[:, before[name]]
            layer.bias.copy_(was.bias)
        grown.head.weight[:old] = tagger.head.weight
        grown.head.bias[:old] = tagger.head.bias
        grown.head.bias[old:] = tagger.head.bias.mean()  # start new classes at the old classes' typical prior
    return grown.to(tagger.head.weight.device)


def save_tagger(tagger: Tagger, folder: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tagger.state_dict().items()}, buffer)
    write_atomic(folder / "weights.pt", buffer.getvalue())
    write_atomic(folder / "tagger.json", tagger.spec.to_json())
    return folder


def load_tagger(folder: Path, device: str | torch.device = "cpu") -> Tagger:
    spec_path, weights_path = folder / "tagger.json", folder / "weights.pt"
    if not spec_path.exists() or not weights_path.exists():
        raise ConfigError(f"{folder} is not a saved tagger (needs tagger.json and weights.pt)")
    tagger = build_tagger(TaggerSpec.from_json(spec_path.read_text()))
    tagger.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return tagger.to(device).eval()


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, module)


def _load_backbone_weights(net: nn.Module, head_name: str, path: Path, arch: str) -> None:
    if not path.exists():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many kinds for a file that is not a state dict)
        raise ConfigError(f"weights file {path} is not a torch state dict: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    backbone_state = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
    try:
        result = net.load_state_dict(backbone_state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ConfigError(f"weights file {path} does not fit {arch}: {str(err).splitlines()[-1].strip()}") from None
    missing = [k for k in result.missing_keys if not k.startswith(head_name + ".")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise ConfigError(f"weights file {path} does not fit {arch}: e.g. {', '.join(bad)}")
