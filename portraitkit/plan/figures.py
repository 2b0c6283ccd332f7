"""Teaching figures for notebook 04: what a LoRA adds to a weight matrix, and where memory goes.

Every number drawn is computed here from its inputs (matrix sizes, parameter counts, bytes per
number), so the figures cannot drift from the arithmetic they illustrate.
"""

from __future__ import annotations

from portraitkit.core.pictures import as_picture

# Bytes per number. Trained parameters live in fp32 with an fp32 gradient (fp16 would lose
# updates of lr 1e-4 x gradient); frozen ones in fp16. AdamW keeps two fp32 moments per
# trained parameter (8 bytes); bitsandbytes' 8-bit AdamW keeps them in 8 bits each (2 bytes).
FP16, FP32 = 2, 4
ADAM_STATE = {"AdamW (32-bit)": 8, "8-bit AdamW": 2}
GIB = 2**30  # GiB, as nvidia-smi, Colab and the planner report memory


def lora_figure(rank: int = 16, d: int = 640, k: int = 640):
    """W (d x k, frozen) beside B (d x r) and A (r x k), drawn to scale, with their sizes.

    640 x 640 is a self-attention projection (to_q, to_k, to_v, to_out) in SD1.5's 640-channel
    blocks; the other blocks have 320 x 320 and 1280 x 1280 ones, and cross-attention's to_k and
    to_v are C x 768. The share the LoRA adds, r(d+k)/(dk), is what the figure is about.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    frozen, trained = d * k, rank * (d + k)
    figure = Figure(figsize=(9, 3.8), dpi=100)
    axes = figure.subplots()
    gap = 0.18 * k
    # W on the left; B (tall, thin) and A (short, wide) on the right, as in W + B·A.
    axes.add_patch(Rectangle((0, 0), k, d, color="#b8c0cc"))
    axes.text(k / 2, d / 2, f"W  {d}×{k}\nfrozen\n{frozen:,} numbers", ha="center", va="center", fontsize=11)
    axes.text(k + gap / 2, d / 2, "+", ha="center", va="center", fontsize=22)
    b_left = k + gap
    axes.add_patch(Rectangle((b_left, 0), max(rank, 6), d, color="#e0702d"))
    axes.text(b_left - 10, -0.06 * d, f"B  {d}×{rank}", ha="left", va="top", fontsize=10)
    a_left = b_left + max(rank, 6) + gap / 3
    axes.add_patch(Rectangle((a_left, d - max(rank, 6)), k, max(rank, 6), color="#2d7fe0"))
    axes.text(a_left + k / 2, d - max(rank, 6) - 0.05 * d, f"A  {rank}×{k}", ha="center", va="top", fontsize=10)
    axes.text(a_left + k / 2, d * 0.42,
              f"trained: r·(d+k) = {trained:,} numbers\n= {100 * trained / frozen:.1f}% of W  (rank r = {rank})\n"
              "B starts at zero: at step 0 the model\nis exactly the original one",
              ha="center", va="center", fontsize=10)
    axes.set_xlim(-10, a_left + k + 10)
    axes.set_ylim(-0.2 * d, d * 1.05)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title("A LoRA beside one weight matrix: W + B·A", fontsize=12)
    figure.tight_layout()
    return as_picture(figure)


def training_state_gib(parameters: float, optimizer_bytes: int) -> dict[str, float]:
    """GiB held for trained parameters: their fp32 weights and gradients, and the optimizer's state."""
    gib = parameters / GIB
    return {"trained weights + gradients (fp32)": gib * (FP32 + FP32), "optimizer state": gib * optimizer_bytes}


def memory_figure(base: str = "sd15", rank: int = 16, gpu: str = "t4"):
    """Stacked bars: the memory of what is trained, full fine-tune against LoRA, 32-bit against 8-bit Adam.

    Parameter counts are the planner's, exact, from the base's real-size architecture built on
    PyTorch's meta device. Activations are left out on purpose: they depend on resolution, batch
    and checkpointing, not on the optimizer; the planner's estimate in the notebook covers them.
    """
    from matplotlib.figure import Figure

    from portraitkit.plan import estimate

    counts = estimate.parameter_counts(base)
    name = "UNet" if "unet" in counts else "transformer"  # SD's UNet, FLUX.2's transformer
    unet = counts["unet" if name == "UNet" else "transformer"]
    lora = estimate.lora_parameter_count(base, rank)
    budget = estimate.DEVICES[gpu].gpu_memory_gb
    bars = {}
    for label, state in ADAM_STATE.items():
        bars[f"full fine-tune\n{label}"] = training_state_gib(unet, state)
    frozen = unet / GIB * FP16
    for label, state in ADAM_STATE.items():
        bars[f"LoRA rank {rank}\n{label}"] = {f"frozen {name} (fp16)": frozen, **training_state_gib(lora, state)}
    colours = {f"frozen {name} (fp16)": "#b8c0cc", "trained weights + gradients (fp32)": "#e0702d", "optimizer state": "#2d7fe0"}

    figure = Figure(figsize=(9, 4), dpi=100)
    axes = figure.subplots()
    for x, parts in enumerate(bars.values()):
        bottom = 0.0
        for part, value in parts.items():
            axes.bar(x, value, bottom=bottom, color=colours[part], label=part, width=0.6)
            bottom += value
        optimizer_mib = parts["optimizer state"] * 1024
        note = f"{bottom:.1f} GiB" + (f"\n(optimizer {optimizer_mib:.0f} MiB)" if optimizer_mib < 1024 else "")
        axes.text(x, bottom + 0.2, note, ha="center", va="bottom", fontsize=9)
    axes.axhline(budget, color="#cf222e", linestyle="--", linewidth=1)
    axes.text(-0.45, budget + 0.2, f"free {gpu.upper()}: {budget:g} GiB", ha="left", va="bottom", color="#cf222e", fontsize=9)
    axes.set_xticks(range(len(bars)), list(bars), fontsize=9)
    axes.set_ylabel("GiB (activations not included)")
    axes.set_title(f"{base} {name} ({unet / 1e6:.0f}M parameters; LoRA {lora / 1e6:.1f}M): memory of what is trained", fontsize=11)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), fontsize=8, loc="center right")
    axes.set_ylim(0, max(budget, max(sum(p.values()) for p in bars.values())) * 1.2)
    figure.tight_layout()
    return as_picture(figure)


def preservation_figure(base: str = "sd15", gpu: str = "t4", steps: int = 1000, class_images: int = 50):
    """What keeping the base model's idea of "a person" costs, three ways, from the planner's
    estimates: training alone; DreamBooth's prior preservation (a class image rides beside each
    photo, and `class_images` are rendered before training); output preservation (the class
    caption through the UNet with and without the LoRA each step, no images). Minutes for the run
    on the left, peak GPU memory on the right."""
    from matplotlib.figure import Figure

    from portraitkit.plan.estimate import plan_run

    def plan(**settings):
        return plan_run(base, gpu=gpu, steps=steps, advise=False, validations=0, **settings)

    plain, prior, output = plan(), plan(batch_size=2), plan(output_preservation=True)
    render = plain.inference["seconds_per_image"] * 30 / plain.inference["steps"]  # the class images at 30 steps
    options = ["training alone", f"prior preservation\n({class_images} class images)", "output preservation\n(no images)"]
    minutes = [plain.total_seconds / 60, prior.total_seconds / 60, output.total_seconds / 60]
    upfront = [0, class_images * render / 60, 0]
    memory = [p.peak_gpu_mem_gb or p.peak_host_ram_gb for p in (plain, prior, output)]
    figure = Figure(figsize=(10, 3.6), dpi=100)
    left, right = figure.subplots(1, 2)
    colours = ["#b8c0cc", "#e0702d", "#2d7fe0"]
    left.barh(options, minutes, color=colours)
    left.barh(options, upfront, left=minutes, color=colours, alpha=0.4, hatch="//", label="rendering the class images first")
    for row, (total, extra) in enumerate(zip(minutes, upfront)):
        left.text(total + extra, row, f" {total + extra:.1f} min", va="center")
    left.set(xlabel=f"minutes for {steps} steps (estimate)", title=f"{base} on {plain.device.name}: time")
    left.set_xlim(0, max(m + u for m, u in zip(minutes, upfront)) * 1.3)
    left.invert_yaxis()
    left.legend(loc="upper right", fontsize="small")
    right.barh(options, memory, color=colours)
    for row, value in enumerate(memory):
        right.text(value, row, f" {value:.1f} GiB", va="center")
    right.set(xlabel="peak memory, GiB (estimate)", title="memory")
    right.set_yticks(range(3), [""] * 3)
    right.set_xlim(0, max(memory) * 1.3)
    right.invert_yaxis()
    figure.tight_layout()
    return as_picture(figure)
