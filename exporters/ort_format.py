"""ORT format (``.ort``) and ``required_operators.config``, made with onnxruntime's own tools.

``onnxruntime.tools.convert_onnx_models_to_ort`` optimises the model at the "all" level
with the fixed optimisation style and target platform ``arm`` (which leaves out the x86-only
NCHWc layout transformer), saves it in ORT format, and writes the operator list a reduced
onnxruntime build takes with ``--include_ops_by_config``.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

from edgeprune.errors import EdgepruneError
from edgeprune.exporters.onnx_export import one_line, quiet_output

CONFIG_NAME = "required_operators.config"
logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs every config at INFO


@dataclass
class OrtFormatResult:
    ort_path: Path
    config_path: Path
    required_operators: list[str]   # the config's lines: "domain;opset;Op1,Op2,..."
    optimization: str = "level all, fixed style, target platform arm"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ort_path"], d["config_path"] = self.ort_path.name, self.config_path.name
        return d


def convert_to_ort(onnx_path: str | Path, out_dir: str | Path, target_platform: str = "arm") -> OrtFormatResult:
    """Write ``<stem>.ort`` and ``required_operators.config`` for ``onnx_path`` into ``out_dir``."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=".ort-", dir=out_dir) as tmp:
        src = Path(tmp) / "src" / onnx_path.name
        src.parent.mkdir()
        shutil.copy2(onnx_path, src)   # the tool converts every .onnx beside the one it is given
        work = Path(tmp) / "out"
        try:
            with quiet_output():
                convert_onnx_models_to_ort(src, output_dir=work, optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform)
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise EdgepruneError(f"ORT format conversion failed: {one_line(e)}") from e
        ort_files = list(work.glob("*.ort"))
        configs = list(work.glob("*.config"))
        if len(ort_files) != 1 or len(configs) != 1:
            raise EdgepruneError(f"ORT format conversion wrote {[p.name for p in work.iterdir()]}, "
                                 "expected one .ort and one .config")
        ort_path = out_dir / f"{onnx_path.stem}.ort"
        config_path = out_dir / CONFIG_NAME
        shutil.move(str(ort_files[0]), ort_path)
        # The tool's header names the temporary file it read; name the artifact's file instead.
        text = re.sub(r"(?m)^# - .*\.ort$", f"# - {ort_path.name}", configs[0].read_text())
        config_path.write_text(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return OrtFormatResult(ort_path=ort_path, config_path=config_path, required_operators=lines)
