"""sam2ptq: post-training quantization of SAM2's image encoder.

Packages by role: ``algorithms`` (pure tensor math), ``sam2`` (the SAM2 adapter), ``pipeline`` (configuration, stage
declarations, the stage store, progress) and ``export`` (output formats, readers, report). See docs/ARCHITECTURE.md.
"""
__version__ = "0.2.0"  # the one code version: pyproject reads it, stage manifests record it
