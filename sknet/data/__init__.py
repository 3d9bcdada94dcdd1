"""CIFAR-10 binary layout: facts, verification, synthetic copies and the MindSpore input pipeline."""

from sknet.data.layout import LayoutReport, layout_dir, verify_layout
from sknet.data.synth import write_synthetic_layout

__all__ = ["LayoutReport", "layout_dir", "verify_layout", "write_synthetic_layout"]
