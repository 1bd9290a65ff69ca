"""Shared test fixtures: the reduced SAM2 architecture and its config."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDUCED_CFG = ROOT / "tests" / "data" / "reduced.yaml"
ARCH = dict(hidden_size=48, embed_dim_per_stage=[48, 96, 192, 384], num_attention_heads_per_stage=[1, 1, 2, 2],
            blocks_per_stage=[1, 1, 2, 1], global_attention_blocks=[3])
