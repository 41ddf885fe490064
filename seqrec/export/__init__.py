"""Export a trained run to a serving bundle: ``export_bundle(run_dir, out, format="onnx")``.

Needs torch (it loads the run); the bundle it writes is served by ``seqrec.serving`` without torch.
Layout and manifest: ``seqrec.serving.layout``.
"""

from __future__ import annotations

from seqrec.export.bundle import FORMATS, export_bundle

__all__ = ["FORMATS", "export_bundle"]
