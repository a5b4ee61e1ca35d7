"""`apply_sparge` / `remove_sparge`: switch the self-attention of a Wan transformer (or pipeline) to sparge."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel

from .config import SpargeConfig
from .hooks import install_hooks, remove_hooks
from .parallel import check_context_parallel
from .processor import SpargeWanAttnProcessor
from .state import SpargeState

__all__ = ["apply_sparge", "remove_sparge", "sparge_state"]

_STATE_ATTR = "_sparge_state"
_HOOK_ATTR = "_sparge_forward_hook"
_ORIGINALS_ATTR = "_sparge_original_processors"


def _unwrap(model: Any) -> Any:
    return getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule


def _transformers(pipe_or_transformer: Any) -> tuple[list[tuple[str, WanTransformer3DModel]], Any | None]:
    """[(name prefix, transformer)] and the pipeline (or None) behind `pipe_or_transformer`."""
    target = _unwrap(pipe_or_transformer)
    if isinstance(target, WanTransformer3DModel):
        return [("", target)], None
    found = []
    for attr, prefix in (("transformer", ""), ("transformer_2", "transformer_2.")):
        model = _unwrap(getattr(target, attr, None))
        if model is not None:
            if not isinstance(model, WanTransformer3DModel):
                raise TypeError(f"pipe_or_transformer.{attr} is a {type(model).__name__}, not a WanTransformer3DModel")
            found.append((prefix, model))
    if not found:
        raise TypeError(
            "pipe_or_transformer must be a diffusers WanTransformer3DModel or a Wan pipeline with a .transformer, "
            f"got {type(pipe_or_transformer).__name__}"
        )
    return found, target


def _forward_pre_hook(state: SpargeState, patch_size: tuple[int, int, int]):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        state.begin_forward(hidden_states, timestep, patch_size)

    return hook


def apply_sparge(pipe_or_transformer: Any, config: SpargeConfig | None = None, /, **fields: Any) -> SpargeState:
    """Install sparge self-attention on every block's attn1 of a Wan transformer (or a Wan pipeline's
    `transformer` and `transformer_2`). Cross-attention (attn2, incl. the I2V image tokens) is untouched.

    The settings are a `SpargeConfig` (`config`, default `SpargeConfig()`), with any of its fields given as
    keywords on top: `apply_sparge(pipe, topk=0.05, collect_stats=True)`, `apply_sparge(pipe, SpargeConfig(...))`,
    `apply_sparge(pipe, config, dense_steps=2)`. Statistics (`collect_stats`) and timing (`time_attention`) are
    hooks beside the processors (hooks.py), installed only when asked for.

    Returns the shared `SpargeState` (its `.stats` and `.timer` hold what was opted in). Apply before
    `torch.compile`. Undo with `remove_sparge`. Composes with diffusers' Ulysses context parallelism
    (`enable_context_parallel` or `transformer.enable_parallelism`, before or after this call; see parallel.py).
    """
    if config is None:
        config = SpargeConfig(**fields)
    elif isinstance(config, SpargeConfig):
        config = config.merged(**fields)
    else:
        raise TypeError(f"config must be a SpargeConfig, got {type(config).__name__}")
    models, pipeline = _transformers(pipe_or_transformer)
    for prefix, model in models:
        if hasattr(model, _STATE_ATTR):
            raise RuntimeError(f"sparge is already applied to {prefix or 'the transformer'}: call remove_sparge first")
        config.check_layers_exist(len(model.blocks))
        # Already parallel (enable_parallelism before apply_sparge): refuse a bad degree now, not at the first call.
        check_context_parallel(model._parallel_config, model.config.num_attention_heads, prefix.rstrip(".") or
                               "transformer")
    state = SpargeState(config, pipeline)
    names = []
    for prefix, model in models:
        originals = []
        for i, block in enumerate(model.blocks):
            name = f"{prefix}blocks.{i}"
            original = block.attn1.processor
            originals.append(original)
            processor = SpargeWanAttnProcessor(state, name, original, always_dense=i in config.dense_layers)
            block.attn1.set_processor(processor)
            install_hooks(block.attn1, state, name, processor)
            names.append(name)
        setattr(model, _ORIGINALS_ATTR, originals)
        setattr(model, _STATE_ATTR, state)
        hooks = []
        if state.needs_forward_hook:
            patch = tuple(model.config.patch_size)
            hooks.append(model.register_forward_pre_hook(_forward_pre_hook(state, patch), with_kwargs=True))
        if state.stats is not None:
            hooks.append(model.register_forward_hook(lambda module, args, output: state.end_forward()))
        setattr(model, _HOOK_ATTR, hooks)
    if state.stats is not None:
        state.stats.declare_layers(names)
    return state


def remove_sparge(pipe_or_transformer: Any) -> None:
    """Restore the exact processor objects `apply_sparge` replaced and remove its hooks. No-op if not applied."""
    models, _ = _transformers(pipe_or_transformer)
    for _, model in models:
        if not hasattr(model, _STATE_ATTR):
            continue
        for block, original in zip(model.blocks, getattr(model, _ORIGINALS_ATTR), strict=True):
            remove_hooks(block.attn1)
            block.attn1.set_processor(original)
        for hook in getattr(model, _HOOK_ATTR):
            hook.remove()
        for attr in (_STATE_ATTR, _HOOK_ATTR, _ORIGINALS_ATTR):
            delattr(model, attr)


def sparge_state(pipe_or_transformer: Any) -> SpargeState | None:
    """The `SpargeState` installed by `apply_sparge`, or None."""
    models, _ = _transformers(pipe_or_transformer)
    return getattr(models[0][1], _STATE_ATTR, None)
