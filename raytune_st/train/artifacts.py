"""The files a finished training run leaves in `args.output_dir`. No Ray.

    final/          the trained model (SentenceTransformer(path) / CrossEncoder(path) load it),
                    its README.md model card ending with the training config and final metrics
    metrics.jsonl   every logged record: {"step": ..., "loss": ..., "eval_...": ...}
    runs/           TensorBoard event files of the same records (args.report_to: tensorboard)
    curves.png      training loss and every eval metric against the step
    config.yaml     the resolved config
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional

from raytune_st.config.core import dump_yaml
from raytune_st.train.checkpointing import write_history
from raytune_st.train.trackers import resolve_report_to


def final_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last value of every metric in the history (a metric logged at step 10 only keeps step 10's)."""
    out: dict[str, Any] = {}
    for record in history:
        out.update({k: v for k, v in record.items() if v is not None})
    return out


def write_tensorboard(log_dir: str, history: list[dict[str, Any]]) -> None:
    """One scalar per metric and record, at the record's step (train/... and eval/... as TensorBoard groups)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=log_dir)
    try:
        for record in history:
            step = record["step"]
            for key, value in record.items():
                if key == "step" or not isinstance(value, (int, float)):
                    continue
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()


def plot_curves(path: str, history: list[dict[str, Any]]) -> None:
    """A PNG with the training loss and each eval metric against the step."""
    from raytune_st.plots import figure, png_bytes

    eval_keys = sorted({k for r in history for k in r if k.startswith("eval_")})
    panels = [("loss", "training loss")] + [(k, k) for k in eval_keys]
    fig, axes = figure((7, 2.6 * len(panels)), rows=len(panels))
    for ax, (key, title) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    with open(path, "wb") as handle:
        handle.write(png_bytes(fig))


def card_section(config: Any, metrics: dict[str, Any], best_step: Optional[int]) -> str:
    """The model-card section raytune_st appends: how the model was trained and what it scored."""
    lines = ["", "## Training with raytune_st", ""]
    if best_step is not None:
        lines += [f"This is the best checkpoint (step {best_step}) by `{config.args.best_metric}`.", ""]
    lines += ["### Final metrics", "", "| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    lines += ["", "### Training config", "", "```yaml", dump_yaml(config).rstrip(), "```", ""]
    return "\n".join(lines)


def write_final_model(model_dir: str, target: str, config: Any, metrics: dict[str, Any], best_step: Optional[int]) -> None:
    """Copy a checkpoint's model to `target` with a model card (sentence-transformers' own plus our section)."""
    from raytune_st.models.loading import load_model

    if os.path.exists(target):
        shutil.rmtree(target)
    model = load_model(model_dir, config.model.type or "bi_encoder", device="cpu")
    card = config.model.card
    data = model.model_card_data
    if card.language:
        data.set_language(card.language)
    if card.license:
        data.set_license(card.license)
    if card.model_name:
        data.model_name = card.model_name
    data.add_tags(["generated_from_trainer", "raytune_st"])
    if best_step is not None:
        data.set_best_model_step(best_step)
    model.save(target)
    readme = os.path.join(target, "README.md")
    existing = open(readme).read() if os.path.exists(readme) else f"# {card.model_name or 'Trained model'}\n"
    with open(readme, "w") as handle:
        handle.write(existing.rstrip() + "\n" + card_section(config, metrics, best_step))


def write_run_outputs(
    stage: str,
    *,
    config: Any,
    model_dir: str,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
    best_step: Optional[int] = None,
) -> None:
    """Write every output file into the local directory `stage`."""
    os.makedirs(stage, exist_ok=True)
    write_final_model(model_dir, os.path.join(stage, "final"), config, metrics, best_step)
    write_history(os.path.join(stage, "metrics.jsonl"), history)
    if "tensorboard" in resolve_report_to(config.args.report_to):
        write_tensorboard(os.path.join(stage, "runs"), history)
    plot_curves(os.path.join(stage, "curves.png"), history)
    with open(os.path.join(stage, "config.yaml"), "w") as handle:
        handle.write(dump_yaml(config))
