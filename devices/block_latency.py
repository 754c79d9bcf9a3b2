"""Predicted latency of "the model minus these blocks", from one export.

The planner weighs many candidate block removals; exporting each candidate would take
seconds apiece. Instead the model is exported once with torch's dynamo exporter, which
records in every ONNX node's ``pkg.torch.onnx.name_scopes`` metadata the module path it
came from (``['', 'layer1', 'layer1.3', 'layer1.3.conv1', ...]``). Each predicted kernel is
attributed to the innermost requested block on that path, and a candidate's latency is
the base minus the removed blocks' costs::

    table = block_latency_table(model, (torch.randn(1, 1, 32, 32),), "host")
    table.base_ms                                  # the full model
    table.predict_without(["layer1.3", "layer2.5"])  # ms, the two blocks replaced by identity
    table.estimate_without(["layer1.3"])            # with the error band

Removing a block removes every block nested in it unless ``keep`` names it (a projection
block replaced by its shortcut). The weight-spill term of the latency
model depends on the model's total weights, so it is recomputed for each candidate
rather than subtracted (exact for this linear model, not an approximation of it).
"""

from __future__ import annotations

import ast
import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import onnx

from edgeprune.devices.kernel_graph import detect_kernels, spill_fraction
from edgeprune.devices.predictor import as_profile, band, kernel_cost_us, require_model
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.errors import EdgepruneError

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
REST = ""   # kernels outside every block (stem, head, layout reorders)


@dataclass
class BlockCost:
    """What one block contributes to a prediction."""

    fixed_us: float = 0.0        # kernel costs without the weight-spill term
    spill_us: float = 0.0        # the spill term's cost if all of the model's weights spilled
    weight_bytes: float = 0.0
    kernels: int = 0


@dataclass
class LatencyEstimate:
    latency_ms: float
    low_ms: float
    high_ms: float
    expected_error: float
    removed: list[str]
    device: str
    source: str


@dataclass
class BlockLatencyTable:
    """Per-block predicted costs of one exported model on one device."""

    device: str
    blocks: list[str]
    costs: dict[str, BlockCost]          # block name -> cost; REST for the remainder
    run_overhead_us: float
    runtime_factor: float
    cache_mb: float
    expected_error: float
    source: str = ""
    nested: dict[str, list[str]] = field(default_factory=dict)   # block -> blocks inside it

    def predict_without(self, removed: Iterable[str] = (), keep: Iterable[str] = ()) -> float:
        """Predicted latency (ms) of the model with ``removed`` blocks replaced by identity.

        ``keep`` names blocks nested in removed ones that stay (a projection block replaced
        by its shortcut: ``removed=["layer2.0"], keep=["layer2.0.shortcut"]``, with both
        names in the table's blocks).
        """
        gone = gone_blocks(removed, keep, self.blocks, self.nested)
        kept = [c for name, c in self.costs.items() if name not in gone]
        weights = sum(c.weight_bytes for c in kept)
        spill = spill_fraction(weights, self.cache_mb)
        us = self.run_overhead_us + sum(c.fixed_us + spill * c.spill_us for c in kept)
        return us * self.runtime_factor / 1e3

    def estimate_without(self, removed: Iterable[str] = (), keep: Iterable[str] = ()) -> LatencyEstimate:
        removed = list(removed)
        ms = self.predict_without(removed, keep)
        e = self.expected_error
        return LatencyEstimate(ms, ms * (1 - e), ms * (1 + e), e, removed, self.device, self.source)

    @property
    def base_ms(self) -> float:
        return self.predict_without(())

    def block_ms(self) -> dict[str, float]:
        """Latency saved by removing each block alone (ms)."""
        base = self.base_ms
        return {b: base - self.predict_without([b]) for b in self.blocks}

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "base_ms": self.base_ms, "expected_error": self.expected_error,
                "source": self.source, "block_ms": self.block_ms()}


def _scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == SCOPE_KEY:
            try:
                v = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in v if isinstance(s, str)]
    return []


def _owner(scopes: list[str], blocks: set[str]) -> str:
    for s in reversed(scopes):
        if s in blocks:
            return s
    return REST


def nested_blocks(blocks: Sequence[str]) -> dict[str, list[str]]:
    """Block -> the blocks inside it (by module path)."""
    return {b: [o for o in blocks if o != b and o.startswith(b + ".")] for b in blocks}


def gone_blocks(removed: Iterable[str], keep: Iterable[str], blocks: Sequence[str],
                nested: dict[str, list[str]]) -> set[str]:
    """The blocks ``removed`` takes out with everything nested in them, less ``keep`` (and what it nests); an
    unknown name is refused in one line."""
    def closure(names: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for b in names:
            if b not in blocks or b == REST:
                raise EdgepruneError(f"unknown block {b!r}; blocks of this model: {', '.join(blocks[:12])}"
                                     + (" ..." if len(blocks) > 12 else ""))
            out.add(b)
            out.update(nested.get(b, []))
        return out
    return closure(removed) - closure(keep)


def block_owners(model: onnx.ModelProto, blocks: Sequence[str], purpose: str) -> dict[str, str]:
    """Node name -> the innermost of ``blocks`` its module scope lies in (REST: none); a model whose nodes lie in
    none of them (exported without scopes) is refused in one line saying what the scopes were needed for."""
    block_set = set(blocks)
    owners = {n.name: _owner(_scopes(n), block_set) for n in model.graph.node}
    if blocks and not any(v != REST for v in owners.values()):
        raise EdgepruneError(
            "the ONNX model carries no module scopes (pkg.torch.onnx.name_scopes); export it "
            f"with torch.onnx.export(..., dynamo=True) to {purpose}")
    return owners


def table_from_onnx(model: onnx.ModelProto, device: DeviceProfile | str,
                    blocks: Sequence[str]) -> BlockLatencyTable:
    """Build the table from an ONNX model exported by torch's dynamo exporter."""
    profile = as_profile(device)
    lm = require_model(profile)
    owner_of_node = block_owners(model, blocks, "predict block removals")
    kernels = detect_kernels(model, lm.nchwc_block)
    costs: dict[str, BlockCost] = {b: BlockCost() for b in blocks}
    costs[REST] = BlockCost()
    for k in kernels:
        owner = next((owner_of_node[n] for n in k.nodes if n in owner_of_node), REST)
        c = costs[owner]
        fixed = kernel_cost_us(k, lm, 0.0)
        c.fixed_us += fixed
        c.spill_us += kernel_cost_us(k, lm, 1.0) - fixed
        c.weight_bytes += k.w_bytes
        c.kernels += 1
    nested = nested_blocks(blocks)
    return BlockLatencyTable(
        device=profile.name, blocks=list(blocks), costs=costs,
        run_overhead_us=lm.run_overhead_us, runtime_factor=lm.runtime_factor,
        cache_mb=lm.cache_mb, expected_error=band(profile),
        source=f"predicted:{profile.name}", nested=nested)


def default_blocks(model: Any) -> list[str]:
    """Every non-leaf module held in an ``nn.Sequential`` (``layer1.0``, ``features.3``)."""
    from torch import nn

    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            for child_name, child in mod.named_children():
                if any(True for _ in child.children()):
                    names.append(f"{name}.{child_name}" if name else child_name)
    return names


def export_for_blocks(model: Any, example_inputs: Any) -> onnx.ModelProto:
    """Export ``model`` once with the dynamo exporter (eval mode; training flag restored)."""
    import torch

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            program = torch.onnx.export(model, args, dynamo=True, verbose=False)
    except Exception as e:  # the exporter raises many types; the user needs one line
        raise EdgepruneError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return program.model_proto


def block_latency_table(model: Any, example_inputs: Any, device: DeviceProfile | str,
                        blocks: Sequence[str] | None = None) -> BlockLatencyTable:
    """Export ``model`` once and predict per-block latency on ``device``.

    ``blocks`` are qualified module names as in ``model.named_modules()`` (default:
    :func:`default_blocks`). ``example_inputs`` is a tensor or a tuple of tensors on the
    model's device.
    """
    names = dict(model.named_modules())
    blocks = list(blocks) if blocks is not None else default_blocks(model)
    unknown = [b for b in blocks if b not in names or b == ""]
    if unknown:
        raise EdgepruneError(f"no module named {', '.join(map(repr, unknown))} in the model")
    return table_from_onnx(export_for_blocks(model, example_inputs), device, blocks)
