"""Instrumentation beside the processor (diffusers hooks on each block's `attn1`), installed by `apply_sparge` only
when asked for: the processor computes attention and nothing else.

- `DensityStatsHook` (`collect_stats=True`): runs the processor's `attend`, which also returns the block mask it
  used, and queues the mask's per-head density (all heads: under Ulysses gathered over the ranks, see
  `SpargeWanAttnProcessor.head_density`) — a tensor, so under `torch.compile(fullgraph=True)` it is just one
  more graph output — on `DensityStats`. The transformer's forward hook, outside the compiled blocks, files the
  queue under the denoising step (`SpargeState.flush_stats`). Dense calls queue 1.0 per head.
- `AttentionTimingHook` (`time_attention=True`): a `Timer` interval around every self-attention call (CUDA events
  or perf_counter), keyed by the denoising step. Taking a mark is host code, so a compiled block breaks its graph
  there: time eager (or non-fullgraph) runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

if TYPE_CHECKING:
    from .processor import SpargeWanAttnProcessor
    from .state import SpargeState

__all__ = ["AttentionTimingHook", "DensityStatsHook", "install_hooks", "remove_hooks"]

STATS_HOOK = "sparge_density_stats"
TIMING_HOOK = "sparge_attention_timing"


class DensityStatsHook(ModelHook):
    def __init__(self, state: SpargeState, layer: str, processor: SpargeWanAttnProcessor) -> None:
        super().__init__()
        self.state = state
        self.layer = layer
        self.processor = processor

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        out, mask = self.processor.attend(module, hidden_states, *args, **kwargs)
        self.state.stats.defer(self.layer, self.processor.head_density(module, hidden_states, mask))
        return out


class AttentionTimingHook(ModelHook):
    def __init__(self, state: SpargeState) -> None:
        super().__init__()
        self.state = state
        self._device: torch.device | None = None
        self._token: object | None = None

    @torch.compiler.disable
    def _start(self, device: torch.device) -> None:
        self._device = device
        self._token = self.state.timer.start(device)

    @torch.compiler.disable
    def _stop(self) -> None:
        self.state.timer.stop(self.state.step, self._token, self._device)

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        self._start((args[0] if args else kwargs["hidden_states"]).device)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self._stop()
        return output


def install_hooks(attn: torch.nn.Module, state: SpargeState, layer: str, processor: SpargeWanAttnProcessor) -> None:
    """Register the hooks `state.config` asks for on one `attn1` (timing outermost: it covers the whole call)."""
    if not (state.config.collect_stats or state.config.time_attention):
        return
    created = not hasattr(attn, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(attn)
    attn._sparge_created_registry = created
    if state.config.collect_stats:
        registry.register_hook(DensityStatsHook(state, layer, processor), STATS_HOOK)
    if state.config.time_attention:
        registry.register_hook(AttentionTimingHook(state), TIMING_HOOK)


def remove_hooks(attn: torch.nn.Module) -> None:
    """Undo `install_hooks`; the module is left as it was (no registry, no instance `forward`) if it had none."""
    registry = getattr(attn, "_diffusers_hook", None)
    if registry is None:
        return
    for name in (TIMING_HOOK, STATS_HOOK):
        registry.remove_hook(name, recurse=False)
    if getattr(attn, "_sparge_created_registry", False) and not registry.hooks:
        del attn._diffusers_hook
        attn.__dict__.pop("forward", None)  # the registry left the original bound method as an instance attribute
    attn.__dict__.pop("_sparge_created_registry", None)
