"""The base layer types a generated method can adapt.

Every layer type is seen through one *canonical* 2-D view of its weight, shape (out_features, in_features):
`nn.Linear` as is, transformers' `Conv1D` transposed (fan_in_fan_out), `nn.Embedding` transposed
(in = num_embeddings, out = embedding_dim), and convolutions flattened to (out_channels, in_channels/groups *
kernel elements). A spec writes its math once against that view; the generated layer classes convert to and
from the real weight layout. This is what lets one spec serve every layer type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerFamily:
    """One generated layer class and the base layer types it wraps."""

    class_name: str  # the generated class, e.g. "Linear"
    kind: str  # "linear" | "embedding" | "conv": selects the template block
    base_types: tuple[str, ...]  # spec layer types this class wraps
    dims: tuple[str, ...]  # dims a spec may use beyond in_features/out_features
    conv_fn: str | None = None  # F.conv1d / F.conv2d / F.conv3d

    @property
    def spatial_dims(self) -> int:
        """How many dims follow (batch, channels) in a convolution's input (0 for other layers)."""
        return int(self.conv_fn[-2]) if self.conv_fn else 0

    @property
    def channel_view(self) -> str:
        """Indexing that turns a per-channel vector into one that broadcasts over the layer's output."""
        return f"[:{', None' * self.spatial_dims}]" if self.spatial_dims else ""


# The spec's layer type -> torch class expression used in `isinstance` checks of the generated model.
TORCH_CLASSES: dict[str, str] = {
    "Linear": "torch.nn.Linear",
    "Conv1D": "Conv1D",
    "Embedding": "torch.nn.Embedding",
    "Conv1d": "torch.nn.Conv1d",
    "Conv2d": "torch.nn.Conv2d",
    "Conv3d": "torch.nn.Conv3d",
}

_CONV_DIMS = ("in_channels", "out_channels", "kernel_numel", "groups")

FAMILIES: tuple[LayerFamily, ...] = (
    LayerFamily("Linear", "linear", ("Linear", "Conv1D"), ()),
    LayerFamily("Embedding", "embedding", ("Embedding",), ("num_embeddings", "embedding_dim")),
    LayerFamily("Conv1d", "conv", ("Conv1d",), _CONV_DIMS, "F.conv1d"),
    LayerFamily("Conv2d", "conv", ("Conv2d",), _CONV_DIMS, "F.conv2d"),
    LayerFamily("Conv3d", "conv", ("Conv3d",), _CONV_DIMS, "F.conv3d"),
)

UNIVERSAL_DIMS = ("in_features", "out_features")
ALL_DIMS = UNIVERSAL_DIMS + ("num_embeddings", "embedding_dim") + _CONV_DIMS

# How a dim reads in generated layer code.
DIM_CODE: dict[str, str] = {
    "in_features": "self.in_features",
    "out_features": "self.out_features",
    "num_embeddings": "self._base().num_embeddings",
    "embedding_dim": "self._base().embedding_dim",
    "in_channels": "self._base().in_channels",
    "out_channels": "self._base().out_channels",
    "kernel_numel": "math.prod(self._base().kernel_size)",
    "groups": "self._base().groups",
}


def families_for(layer_types: list[str]) -> list[LayerFamily]:
    """The generated classes needed for the spec's layer types, in a stable order."""
    return [f for f in FAMILIES if any(t in layer_types for t in f.base_types)]


def family_of_forward_key(key: str) -> LayerFamily | None:
    return next((f for f in FAMILIES if f.class_name == key), None)


def dims_available(layer_types: list[str]) -> set[str]:
    """Dims every listed layer type defines (a weight's shape must make sense for each of them)."""
    families = families_for(layer_types)
    common = set(ALL_DIMS)
    for family in families:
        common &= set(UNIVERSAL_DIMS) | set(family.dims)
    return common
