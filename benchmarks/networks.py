"""Small network helpers shared by the model families and the methods."""
from __future__ import annotations

from typing import Callable, Literal

from torch import nn

from .errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: list[int], activation_name: str, final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with `activation_name` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation(activation_name))
    return nn.Sequential(*layers)


Activation = Literal["tanh", "elu", "relu", "softplus"]
