"""The model files of the output tree, from the stage artifacts: the DeepCompressor-style cache files, the
optional nunchaku safetensors and the resolved config."""
from __future__ import annotations

from pathlib import Path

import yaml

from .artifacts import FetchedModel, QuantizedLayers, SmoothingChoice
from .config import RunConfig
from .runtime import load_fp_model

__all__ = ["write_model_files"]


def write_model_files(d: Path, c: RunConfig, fetched: FetchedModel, smooth: SmoothingChoice,
                      gptq: QuantizedLayers) -> None:
    from ..export.cache_files import write_cache_files
    fp = load_fp_model(c, fetched)
    qlayers, scales = gptq.qlayers(), smooth.scales()
    write_cache_files(d / "cache", fp.model.state_dict(), qlayers, scales, smooth.rotation_choice(),
                      whole_model=c.save_model)
    if c.convert_nunchaku:
        from ..export.nunchaku import write_nunchaku
        write_nunchaku(d / "nunchaku", c, fp.model, qlayers, scales)
    (d / "config.yaml").write_text(yaml.safe_dump(c.model_dump(mode="json"), sort_keys=False))
