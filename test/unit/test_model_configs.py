"""Every shipped ``config/models/*.model.yaml`` loads and builds its (untrained) model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qd_perception.models.build import build_model, load_model_file

MODELS = sorted((Path(__file__).resolve().parents[2] / "config" / "models").glob("*.model.yaml"))


def test_there_are_model_configs():
    assert len(MODELS) >= 2


@pytest.mark.parametrize("path", MODELS, ids=[p.name.removesuffix(".model.yaml") for p in MODELS])
def test_model_config_builds(path: Path):
    import torch

    arch, cfg = load_model_file(path)
    # The file name is <name>.model.yaml or starts with the arch (bevformer_tiny: name "tiny").
    assert path.name.startswith(arch) and cfg.name in path.name
    with torch.device("meta"):  # structure and shapes only: the base models would need GBs
        model = build_model(arch, cfg)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0
