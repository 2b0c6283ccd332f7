"""Memory and FLOPs of the real-size models, measured by running them on PyTorch's meta device.

The real-size UNet's forward and backward (and the VAE and text encoders where a phase runs them)
execute with shapes but no data, while a `TorchDispatchMode` adds up the bytes of every tensor
storage that is alive (rounded up to the 512-byte blocks of PyTorch's CUDA allocator) and keeps
the peak, and PyTorch's own FLOP formulas count the work. A `TorchFunctionMode` applies CUDA
autocast's fp16/fp32 casting rules (from the `torch.amp` documentation), and attention runs as
SDPA's memory-efficient kernel, the one a T4 uses. Gradient checkpointing recomputes blocks exactly
as diffusers does. `check_training_step` runs the same step on real tensors to check the method.

Graphs are cached by the architecture (as canonical JSON, `architectures.arch_key`): the planner
asks for the same ones many times while it searches for advice. The traces of SD1.5 and SDXL at
the settings people choose ship as data (`assets/traced_presets.json`, chosen and rebuilt by
`plan/table.py`): tracing SDXL takes about 20 s on a 2-core CPU, a lookup no time at all.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import inspect
import json
from importlib import resources

from portraitkit.models import families, klein, lora
from portraitkit.models.families.sd import UNET_TARGETS
from portraitkit.models.architectures import COMPONENTS, arch_key, architecture, build_component
from portraitkit.models.conditioning import unet_conditioning

GIB = 2**30
SHIPPED_TABLE = "traced_presets.json"
use_shipped = True  # False traces everything afresh (the table's rebuild, the benchmark's "before")
recorded: dict | None = None  # a dict: every fresh trace is stored in it by its table key (the rebuild)


def table_key(name: str, key: str, args: tuple) -> str:
    """A trace's name in the table: the function, the architecture's digest and the arguments."""
    return json.dumps([name, hashlib.sha256(key.encode()).hexdigest()[:16], *args])


@functools.cache
def shipped_table() -> dict:
    """The shipped traces by table key ({} when the package has none)."""
    path = resources.files("portraitkit") / "assets" / SHIPPED_TABLE
    return json.loads(path.read_text(encoding="utf-8"))["traces"] if path.is_file() else {}


def as_stored(result: dict) -> dict:
    """A trace as the table keeps it: the LoRA tensors' sizes as [size, how many] (order never
    matters: they are summed), as SDXL has over a thousand of them."""
    if "lora_numels" not in result:
        return dict(result)
    counts = collections.Counter(result["lora_numels"])
    return {**result, "lora_numels": [[size, counts[size]] for size in sorted(counts)]}


def _table_first(trace):
    """Answer from the shipped table when it holds this call, else trace (and record for a rebuild)."""
    signature = inspect.signature(trace)

    @functools.wraps(trace)
    def answer(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # the same call with or without its default arguments: one entry
        name = table_key(trace.__name__, bound.args[0], bound.args[1:])
        if use_shipped and (entry := shipped_table().get(name)) is not None:
            if "lora_numels" not in entry:
                return dict(entry)
            return {**entry, "lora_numels": [size for size, count in entry["lora_numels"] for _ in range(count)]}
        result = trace(*bound.args)
        if recorded is not None:
            recorded[name] = as_stored(result)
        return result

    return answer


@contextlib.contextmanager
def _meta(weight_bytes: int):
    """Build modules on the meta device (no memory) in the weights' dtype."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16 if weight_bytes == 2 else torch.float32)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(previous)


def meta_component(key: str, name: str, weight_bytes: int):
    arch = json.loads(key)
    with _meta(weight_bytes):
        module = build_component(arch, name)
    return module.eval().requires_grad_(False)


@functools.lru_cache(maxsize=32)
@_table_first
def component_parameters(key: str) -> dict:
    arch = json.loads(key)
    return {name: sum(p.numel() for p in meta_component(key, name, 2).parameters()) for name in COMPONENTS if name in arch}


@functools.lru_cache(maxsize=8)
@_table_first
def linear_parameters(key: str) -> dict:
    """A FLUX.2 transformer's weights in the Linear layers NF4 quantises (all but `klein.NF4_KEPT`)
    and in its largest one (the dequantised copy a quantised step holds)."""
    import torch

    transformer = meta_component(key, "transformer", 2)
    sizes = [m.weight.numel() for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
             and not any(name == kept or name.startswith(kept + ".") for kept in klein.NF4_KEPT)]
    return {"linear": sum(sizes), "largest": max(sizes)}


def _trace_mode(autocast: bool):
    """A TorchFunctionMode for tracing: attention as on a GPU, and optionally CUDA autocast's casts.

    SDPA runs as its memory-efficient kernel (the one a T4 uses; the CPU's flash kernel keeps the
    same tensors): output plus a log-sum-exp per row, never the N x N attention matrix.

    Autocast itself only acts on CUDA tensors; the meta tensors traced here need the same casts
    made above autograd, so that what the backward pass saves has the dtype it has on a GPU.
    The op lists are those of the torch.amp documentation ("CUDA Ops that can autocast to
    float16 / float32") restricted to what SD's UNet, VAE and CLIP call.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    to_half = {F.linear, F.conv1d, F.conv2d, F.conv_transpose2d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
               torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addmm,
               torch.Tensor.addmm, F.scaled_dot_product_attention}
    to_float = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.exp,
                torch.Tensor.exp, torch.log, torch.Tensor.log, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
                torch.Tensor.__rpow__, torch.rsqrt, torch.Tensor.rsqrt, F.mse_loss, torch.sum, torch.Tensor.sum}

    def cast(dtype):
        return lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype else t

    def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]

    class TraceFunctions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if autocast and "dtype" not in kwargs:  # an explicit dtype opts an op out of autocast
                if func in to_half:
                    args, kwargs = tree_map(cast(torch.float16), args), tree_map(cast(torch.float16), kwargs)
                elif func in to_float:
                    args, kwargs = tree_map(cast(torch.float32), args), tree_map(cast(torch.float32), kwargs)
            query = args[0] if args else kwargs.get("query")
            if func is F.scaled_dot_product_attention and query.device.type == "meta":
                return efficient_attention(*args, **kwargs)
            return func(*args, **kwargs)

    return TraceFunctions()


class _Tracer:
    """Runs a function on meta tensors and reports the peak bytes of live tensors and the FLOPs."""

    def __init__(self, autocast: bool):
        self.autocast = autocast

    def run(self, fn) -> dict:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode
        from torch.utils.weak import WeakIdKeyDictionary

        registry = getattr(FlopCounterMode(display=False), "flop_registry", {})
        state = {"live": 0, "peak": 0, "flops": 0}
        seen = WeakIdKeyDictionary()  # storage -> bytes counted (0: it existed before the trace)
        finalizers = []

        def free(nbytes):
            state["live"] -= nbytes

        def tensors(values):
            """The tensors among an op's arguments or results: each value, or the items of a list or
            tuple (aten's Tensor[] and multiple returns nest no deeper). A plain loop: pytree's general
            flattening was the largest cost of the tracer's own code under cProfile."""
            for value in values:
                if isinstance(value, torch.Tensor):
                    yield value
                elif isinstance(value, (list, tuple)):
                    yield from (item for item in value if isinstance(item, torch.Tensor))

        class LiveBytes(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                for t in (*tensors(args), *tensors(kwargs.values())):
                    if t.untyped_storage() not in seen:
                        seen[t.untyped_storage()] = 0  # weights and inputs: not the graph's to count
                out = func(*args, **kwargs)
                count = registry.get(func._overloadpacket)
                if count is not None:
                    state["flops"] += count(*args, **kwargs, out_val=out)
                for t in tensors((out,)):
                    storage = t.untyped_storage()
                    if storage in seen:
                        continue
                    nbytes = -(-storage.nbytes() // 512) * 512  # the CUDA allocator's 512-byte blocks
                    seen[storage] = nbytes
                    finalizers.append(weakref.ref(storage, lambda _, n=nbytes: free(n)))
                    state["live"] += nbytes
                    state["peak"] = max(state["peak"], state["live"])
                return out

        with LiveBytes(), _trace_mode(self.autocast):
            fn(self)
        return {"peak": state["peak"], "flops": state["flops"]}

    def checkpoint(self, module, *args):
        """diffusers' default checkpointing (non-reentrant); the recomputation runs inside the
        autograd engine, outside the trace's function mode, so it re-enters that mode."""
        import torch.utils.checkpoint

        contexts = lambda: (contextlib.nullcontext(), _trace_mode(self.autocast))  # noqa: E731
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, context_fn=contexts)


def _unet_inputs(arch: dict, batch: int, resolution: int, dtype, device: str = "meta"):
    import torch

    unet = arch["unet"]
    latent = resolution // 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    latents = torch.randn(batch, unet["in_channels"], latent, latent, device=device)
    cond = {"embeds": torch.randn(batch, 77, unet["cross_attention_dim"], device=device)}
    if unet.get("addition_embed_type") == "text_time":
        pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
        cond["pooled"] = torch.randn(batch, pooled, device=device)
    timesteps = torch.zeros(batch, dtype=torch.long, device=device)
    return latents, timesteps, unet_conditioning(cond, resolution, dtype)


@functools.lru_cache(maxsize=64)
@_table_first
def training_step(key: str, resolution: int, batch: int, rank: int, checkpointing: bool, weight_bytes: int,
                   autocast: bool, dora: bool = False) -> dict:
    """One micro-batch of `train`'s loop on the real-size UNet: forward, MSE loss, backward."""
    import torch

    dtype = torch.float16 if weight_bytes == 2 else torch.float32
    return _run_training_step(meta_component(key, "unet", weight_bytes), json.loads(key), resolution, batch, rank,
                              checkpointing, dtype, autocast, "meta", dora)


def _run_training_step(unet, arch: dict, resolution: int, batch: int, rank: int, checkpointing: bool, dtype,
                       autocast: bool, device: str, dora: bool = False) -> dict:
    """Add the LoRA, then one forward, loss and backward of `unet` under the live-tensor tracer;
    on meta tensors for the estimates, on real ones for `check_training_step`."""
    lora_numels = [p.numel() for p in lora.add_adapters(unet, rank, UNET_TARGETS, use_dora=dora)]
    unet.train()
    tracer = _Tracer(autocast)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        for module in unet.modules():  # diffusers' checkpointing, with autocast re-entered on recompute
            if getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = tracer.checkpoint

    def step(_):
        latents, timesteps, cond = _unet_inputs(arch, batch, resolution, dtype, device)
        prediction = unet(latents.to(dtype), timesteps, **cond).sample.float()
        (prediction - latents).pow(2).mean(dim=(1, 2, 3)).mean().backward()

    return {**tracer.run(step), "lora_numels": lora_numels}


@functools.lru_cache(maxsize=16)
@_table_first
def transformer_training_step(key: str, resolution: int, batch: int, rank: int, checkpointing: bool, weight_bytes: int,
                              autocast: bool, targets: str = "attention") -> dict:
    """One micro-batch of `train`'s loop on a FLUX.2 transformer: the LoRA on its attention
    projections (`klein.lora_targets`), forward over the image tokens ((resolution / 16)^2 of 128
    channels) and the 512 cached text tokens, MSE against the velocity, backward."""
    import torch

    arch = json.loads(key)
    dtype = torch.float16 if weight_bytes == 2 else torch.float32
    transformer = meta_component(key, "transformer", weight_bytes)
    lora_numels = [p.numel() for p in lora.add_adapters(transformer, rank, klein.lora_targets(transformer, targets))]
    transformer.train()
    tracer = _Tracer(autocast)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
        transformer._gradient_checkpointing_func = tracer.checkpoint

    def step(_):
        side = resolution // 16  # the VAE's 8x, then 2x2 patches
        latents = torch.randn(batch, arch["transformer"]["in_channels"], side, side, device="meta")
        embeds = torch.randn(batch, klein.MAX_TOKENS, arch["transformer"]["joint_attention_dim"], device="meta")
        prediction, target = klein.velocity_prediction(transformer, latents, torch.randn_like(latents),
                                                        torch.full((batch,), 0.5, device="meta"), embeds, dtype)
        (prediction - target).pow(2).mean(dim=(1, 2, 3)).mean().backward()

    return {**tracer.run(step), "lora_numels": lora_numels}


def check_training_step(folder: str, resolution: int, rank: int = 16, checkpointing: bool = True) -> dict:
    """The check every memory estimate rests on: one real training step of the UNet in `folder` (a
    diffusers folder) on this CPU, in fp32, counted by the same live-tensor tracer as the meta
    trace. Returns both peaks in GiB (`benchmarks/bench_training.py --recipes trace` runs it)."""
    import torch

    from portraitkit.core.quiet import quiet

    with quiet():  # import-time notices of optional kernels
        from diffusers import UNet2DConditionModel

    arch = architecture(folder)
    key = arch_key(arch)
    predicted = training_step(key, resolution, 1, rank, checkpointing, 4, False)["peak"]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32, use_safetensors=True)
    unet.requires_grad_(False)
    real = _run_training_step(unet, arch, resolution, 1, rank, checkpointing, torch.float32, False, "cpu")["peak"]
    return {"live_tensor_peak_gb": real / GIB, "traced_peak_gb": predicted / GIB}


@functools.lru_cache(maxsize=16)
@_table_first
def text_encoder_step(key: str, name: str, batch: int, rank: int, weight_bytes: int, autocast: bool,
                      dora: bool = False) -> dict:
    """A text encoder trained with LoRA: forward with hidden states, backward (no checkpointing, an upper bound)."""
    import torch

    encoder = meta_component(key, name, weight_bytes)
    # the layers `train` adapts (lora.add_to_pipeline): SDXL's first encoder without its unused last layer
    targets = lora.text_encoder_targets(encoder, skip_last_layer=families.named(json.loads(key)["family"]).unused_last_layer(name))
    lora_numels = [p.numel() for p in lora.add_adapters(encoder, rank, targets, use_dora=dora)]
    encoder.train()

    def step(_):
        out = encoder(torch.zeros(batch, 77, dtype=torch.long, device="meta"), output_hidden_states=True)
        out.hidden_states[-2].float().mean().backward()

    return {**_Tracer(autocast).run(step), "lora_numels": lora_numels}


@functools.lru_cache(maxsize=64)
@_table_first
def trace_pass(key: str, name: str, mode: str, batch: int, resolution: int, weight_bytes: int, autocast: bool) -> dict:
    """Peak activation bytes and FLOPs of one no-grad pass: VAE encode/decode, text encoding, one
    UNet or FLUX.2 transformer step."""
    import torch

    arch = json.loads(key)
    module = meta_component(key, name, weight_bytes)
    dtype = torch.float16 if weight_bytes == 2 or autocast else torch.float32
    latent = resolution // 2 ** (len(arch["vae"]["block_out_channels"]) - 1) if resolution else 0

    def run(_):
        with torch.no_grad():
            if name == "unet":
                latents, timesteps, cond = _unet_inputs(arch, batch, resolution, dtype)
                module(latents.to(dtype), timesteps, **cond)
            elif name == "transformer":  # one FLUX.2 denoising pass: image tokens beside 512 text tokens
                side = resolution // 16
                latents = torch.randn(batch, arch["transformer"]["in_channels"], side, side, device="meta")
                embeds = torch.randn(batch, klein.MAX_TOKENS, arch["transformer"]["joint_attention_dim"], device="meta")
                klein.velocity_prediction(module, latents, torch.randn_like(latents), torch.full((batch,), 0.5, device="meta"),
                                          embeds, dtype)
            elif name == "text_encoder" and families.named(arch["family"]).text_tokens == klein.MAX_TOKENS:
                # the pipeline's prompt encoding: 512 tokens, every layer's hidden state kept, and the
                # language model's logits over its vocabulary, which the call computes too
                tokens = torch.zeros(batch, klein.MAX_TOKENS, dtype=torch.long, device="meta")
                # the causal padding mask as the 4-D additive mask the real call builds from the
                # padding (building it here would need data, which meta tensors have none of)
                mask = torch.zeros(batch, 1, klein.MAX_TOKENS, klein.MAX_TOKENS, dtype=dtype, device="meta")
                module(tokens, attention_mask=mask, output_hidden_states=True, use_cache=False)
            elif mode == "encode" and name == "vae":
                module.encode(torch.empty(batch, 3, resolution, resolution, device="meta", dtype=dtype)).latent_dist.mean
            elif mode == "decode":
                module.decode(torch.empty(batch, arch["vae"]["latent_channels"], latent, latent, device="meta", dtype=dtype))
            else:
                module(torch.zeros(batch, 77, dtype=torch.long, device="meta"), output_hidden_states=True)

    return _Tracer(autocast).run(run)


def inference_flops(key: str, resolution: int) -> float:
    """FLOPs of one classifier-free-guidance denoising step (UNet at batch 2)."""
    return trace_pass(key, "unet", "infer", 2, resolution, 2, True)["flops"]
