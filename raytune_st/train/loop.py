"""The training loop that runs on every Ray Train worker, read top to bottom.

:func:`train_loop_per_worker` is what TorchTrainer runs (the train job) and what a Ray Tune
trial runs (through the same TorchTrainer). Its `config` is::

    {"train_config": TrainConfig,         # the resolved config
     "train_rows": {name: rows, ...},     # global row counts, from pre-flight
     "columns": {"train_<name>": [...], "eval_<name>": [...]},
     "data_files": {"train_datasets.<name>": [[file, bytes, digest], ...]},  # optional: kept in checkpoints
     "overrides": {"args.learning_rate": 3e-5, ...},   # optional, e.g. a Tune trial's sample
     "initial_checkpoint": ray.train.Checkpoint}       # optional: where a new run starts (PBT)

The data sets arrive as Ray Train dataset shards named ``train_<name>`` and ``eval_<name>``
(:func:`shard_name`).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from typing import Any, Iterator

from raytune_st.config.core import dump_yaml
from raytune_st.train.batching import (
    Schedule,
    ShardBatcher,
    batches_per_epoch,
    collate,
    columns_to_rows,
    read_ahead,
    skip,
    wants_dataset_name,
)
from raytune_st.train.checkpointing import (
    MODEL_DIR,
    DataPosition,
    TrainingState,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    write_checkpoint,
)
from raytune_st.train.config import TrainConfig, total_optimizer_steps, with_overrides

ROWS_PER_READ = 256  # rows fetched from a shard at a time; batching happens afterwards


def shard_name(section: str, name: str) -> str:
    """The Ray Train dataset name of a train or eval set (no '/': Ray Data uses it in log file names)."""
    return f"{section}_{name}"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import get_scheduler, set_seed

    # 1. Unpack the config; a Tune trial's sample arrives as dotted overrides.
    cfg = with_overrides(config["train_config"], config.get("overrides") or {})
    args = cfg.args
    columns: dict[str, list[str]] = config["columns"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    is_cross = cfg.model.type == "cross_encoder"
    set_seed(args.seed)

    # 2. This worker's shards, opened before the model loads: a Ray Data stream takes seconds to
    #    start (tasks start, files are listed and read), and it starts reading now, meanwhile.
    per_epoch = batches_per_epoch(config["train_rows"], args.per_device_train_batch_size, world_size)
    schedule = Schedule(per_epoch, args.multi_dataset_batch_sampler, args.seed)
    no_dup = args.batch_sampler == "no_duplicates"
    inputs = {name: _inputs(columns[shard_name("train", name)], cfg.model.type) for name in cfg.train_datasets}

    def open_epoch(epoch: int, resume: dict[str, dict[str, Any]]) -> dict[str, tuple[ShardBatcher, int]]:
        """A batcher per data set for `epoch`; on resume, skip what this worker already read."""
        batchers = {}
        for name in cfg.train_datasets:
            shard = ray.train.get_dataset_shard(shard_name("train", name))
            rows = _iter_rows(shard, cfg.stream.shuffle_buffer_size, seed=args.seed + 1000 * epoch + rank)
            done = resume.get(name, {})
            batcher = ShardBatcher(
                read_ahead(skip(rows, done.get("rows_read", 0))),
                args.per_device_train_batch_size,
                no_duplicates=inputs[name] if no_dup else None,
                buffer_size=cfg.stream.no_duplicates_buffer_size,
                pending=done.get("pending", ()),
            )
            batchers[name] = (batcher, done.get("rows_read", 0))
        return batchers

    def open_data(state: TrainingState) -> dict[str, tuple[ShardBatcher, int]]:
        """The batchers of the epoch that `state` is in, where this worker left it."""
        epoch = schedule.epoch_of(state.micro_batches)
        resume = state.position.for_rank(rank, world_size) if state.position.epoch == epoch else {}
        return open_epoch(epoch, resume)

    # 3. The model and where training starts: the last checkpoint when Ray restarted us, else the
    #    checkpoint the run starts from (a PBT trial cloning a better one), else the config.
    own_checkpoint = ray.train.get_checkpoint()
    checkpoint = own_checkpoint or config.get("initial_checkpoint")
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = read_checkpoint(path)
            batchers = open_data(state)
            model = _load_model(cfg, os.path.join(path, MODEL_DIR))
    else:
        state = TrainingState()
        batchers = open_data(state)
        model = cfg.model.load()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device)

    # 4. Losses, one per data set, built on the unwrapped model; then DDP (gloo on CPU, NCCL on GPU)
    #    and the losses pointed at the DDP model so that gradients are averaged across workers.
    from raytune_st.losses.build import build_loss

    losses = {}
    for name in cfg.train_datasets:
        spec = cfg.loss_for("train_datasets", name)
        losses[name] = build_loss(spec.name, spec.kwargs, model, spec.model_type, world_size=world_size).to(device)
    eval_losses = {}
    for name in cfg.eval_datasets:
        spec = cfg.loss_for("eval_datasets", name)
        # Evaluate with the training loss of the same name (it may own trained weights, e.g. SoftmaxLoss).
        if name in losses:
            eval_losses[name] = losses[name]
        else:
            eval_losses[name] = build_loss(spec.name, spec.kwargs, model, spec.model_type).to(device)
    for name, loss_state in state.losses.items():
        losses[name].load_state_dict(loss_state, strict=False)

    ddp_model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": not args.gradient_checkpointing}
    )
    for loss in losses.values():
        _point_loss_at(loss, ddp_model, model)

    # 5. Optimizer with HF's weight-decay groups, the transformers scheduler, mixed precision.
    model_ids = {id(p) for p in model.parameters()}
    loss_params = _unique(p for loss in losses.values() for p in loss.parameters() if id(p) not in model_ids and p.requires_grad)
    optimizer = torch.optim.AdamW(
        _decay_groups(model, loss_params, args.weight_decay),
        lr=args.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=args.optim == "adamw_torch_fused",
    )
    total_steps = total_optimizer_steps(args, schedule.epoch_length)
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=args.fp16)
    amp_dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
    if state.optimizer is not None:
        decay = [group["weight_decay"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        scaler.load_state_dict(state.scaler)
        # This run's hyperparameters, not the checkpoint's: a PBT trial resumes a cloned
        # checkpoint with a perturbed learning rate or weight decay (a plain resume changes nothing).
        scheduler.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
        for group, weight_decay, lr_lambda in zip(optimizer.param_groups, decay, scheduler.lr_lambdas):
            group["weight_decay"], group["initial_lr"] = weight_decay, args.learning_rate
            group["lr"] = args.learning_rate * lr_lambda(scheduler.last_epoch)

    # 6. Batches are tokenised on the worker with sentence-transformers' collator; evaluators on rank 0.
    collator = _collator(model, args.prompts, is_cross)
    with_name = wants_dataset_name(args.prompts, list(cfg.train_datasets) + list(cfg.eval_datasets))
    evaluators = _build_evaluators(cfg) if rank == 0 else []

    def evaluate() -> dict[str, float]:
        return _evaluate(cfg, model, eval_losses, evaluators, columns, collator, with_name, rank, world_size, device, amp_dtype)

    # 7. The loop: gradient_accumulation_steps micro-batches per optimizer step, each from the
    #    data set the shared schedule names, so every worker runs exactly the same steps.
    step, micro = state.step, state.micro_batches
    history = state.history
    resumed_from = step if checkpoint is not None else None
    padded_earlier = 0  # batches padded on a short shard in earlier epochs of this process
    epoch = schedule.epoch_of(micro)
    running_loss = torch.zeros((), device=device)
    running_count = 0
    grad_norm = None
    start = time.perf_counter()
    samples = 0
    ddp_model.train()
    if step >= total_steps:
        # Started at the last step: nothing is left to train. A run restored from its own last
        # checkpoint already ends with it; a run started from another's (PBT cloned a trial that
        # had finished) gets that checkpoint as its own.
        if own_checkpoint is not None:
            return
        ray.train.report(
            {**(history[-1] if history else {}), "step": step},
            checkpoint=_checkpoint(model, state, cfg, config.get("data_files")) if rank == 0 else None,
            checkpoint_dir_name=f"checkpoint-{step:06d}",
            delete_local_checkpoint_after_upload=rank == 0,
        )
        return
    if len(state.rng) == world_size:
        # Last, after everything that draws random numbers while setting up (a loss's new
        # classifier, the model's head): dropout and the rest continue exactly where the
        # checkpointed run was, so a resumed run repeats the uninterrupted one's losses.
        restore_rng_state(state.rng[rank])
    while step < total_steps:
        epoch_before = epoch
        for k in range(args.gradient_accumulation_steps):
            if schedule.epoch_of(micro) != epoch:
                epoch = schedule.epoch_of(micro)
                padded_earlier += sum(batcher.padded_batches for batcher, _ in batchers.values())
                batchers = open_epoch(epoch, {})
            name = schedule.dataset_at(micro)
            rows = batchers[name][0].next_batch()
            batch, features = collate(rows, inputs[name], collator, name if with_name else None)
            labels = batch.get("label")
            if not is_cross:
                features = [_to_device(f, device) for f in features]
            labels = labels.to(device) if isinstance(labels, torch.Tensor) else labels
            last = k == args.gradient_accumulation_steps - 1
            sync = contextlib.nullcontext() if last or world_size == 1 else ddp_model.no_sync()
            with sync:
                with _autocast(device, amp_dtype):
                    loss = _call_loss(losses[name], features, labels, batch) / args.gradient_accumulation_steps
                scaler.scale(loss).backward()
            running_loss += loss.detach()
            micro += 1
            samples += len(rows)
        running_count += 1
        if world_size > 1:
            # Loss-owned weights (SoftmaxLoss's classifier, ...) are outside DDP: average by hand.
            for p in loss_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world_size
        scaler.unscale_(optimizer)
        if args.max_grad_norm > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # 8. Log, evaluate, checkpoint: the same decisions on every worker (they share step and schedule).
        metrics: dict[str, Any] = {}
        epoch_done = schedule.epoch_of(micro) > epoch_before or micro % schedule.epoch_length == 0
        final = step == total_steps
        if step % args.logging_steps == 0 or final:
            mean_loss = running_loss / max(running_count, 1)
            if world_size > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world_size
            elapsed = time.perf_counter() - start
            metrics.update(
                loss=round(float(mean_loss), 6),
                learning_rate=scheduler.get_last_lr()[0],
                epoch=round(micro / schedule.epoch_length, 4),
                train_samples_per_second=round(samples * world_size / elapsed, 3) if elapsed > 0 else None,
            )
            if grad_norm is not None:
                metrics["grad_norm"] = round(grad_norm, 6)
            running_loss.zero_()
            running_count = 0
        scored = cfg.has_eval and (args.load_best_model_at_end or args.metric_for_best_model is not None)
        evaluate_now = cfg.has_eval and args.eval_strategy != "no" and (
            (args.eval_strategy == "steps" and step % args.steps_between_evals == 0)
            or (args.eval_strategy == "epoch" and epoch_done)
            or final
        )
        save_now = final or (
            (args.save_strategy == "steps" and step % args.save_steps == 0)
            or (args.save_strategy == "epoch" and epoch_done)
        )
        if scored and save_now and not evaluate_now and args.eval_strategy != "no":
            evaluate_now = True  # a checkpoint ranked by a metric needs that metric
        if evaluate_now:
            metrics.update(evaluate())
            ddp_model.train()
            if args.save_strategy == "best" and args.best_metric in metrics:
                value = metrics[args.best_metric]
                better = state.best_metric is None or (
                    value > state.best_metric if args.higher_is_better else value < state.best_metric
                )
                if better:
                    state.best_metric = value
                    save_now = True
        if resumed_from is not None and metrics:
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if final:
            metrics.update(_worker_agreement(step, padded_earlier, batchers, world_size, device))
        if not metrics and not save_now:
            continue
        metrics.update(step=step)
        if rank == 0:
            history.append(dict(metrics))
        report_checkpoint = None
        if save_now:
            position, rng = _gather_worker_state(batchers, epoch, rank, world_size)
            if rank == 0:
                state.step, state.micro_batches, state.history, state.position = step, micro, history, position
                state.rng = rng
                state.optimizer, state.scheduler, state.scaler = optimizer.state_dict(), scheduler.state_dict(), scaler.state_dict()
                state.losses = {n: _loss_owned_state(loss, loss_params) for n, loss in losses.items()}
                report_checkpoint = _checkpoint(model, state, cfg, config.get("data_files"))
        ray.train.report(
            metrics,
            checkpoint=report_checkpoint,
            checkpoint_dir_name=f"checkpoint-{step:06d}" if save_now else None,
            delete_local_checkpoint_after_upload=report_checkpoint is not None,
        )


# --- helpers: small, each does one thing the loop above names ------------------------------


def _checkpoint(model: Any, state: TrainingState, cfg: TrainConfig, data_files: Any) -> Any:
    """`state` and the model written to a fresh local directory, as a ray.train.Checkpoint."""
    import ray.train

    directory = tempfile.mkdtemp(prefix="raytune-st-ckpt-")
    write_checkpoint(directory, model, state, dump_yaml(cfg), data_files)
    return ray.train.Checkpoint.from_directory(directory)


def _load_model(cfg: TrainConfig, path: str):
    from raytune_st.models.loading import load_bi_encoder, load_cross_encoder

    if cfg.model.type == "cross_encoder":
        return load_cross_encoder(path, max_length=cfg.model.max_seq_length)
    return load_bi_encoder(path, max_seq_length=cfg.model.max_seq_length)


def _inputs(columns: list[str], model_type: str) -> list[str]:
    from raytune_st.losses.formats import split_columns

    return split_columns(columns, model_type)[0]


def _collator(model: Any, prompts: Any, is_cross: bool):
    if is_cross:
        from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator

        return CrossEncoderDataCollator(preprocess_fn=model.preprocess, prompts=prompts or {})
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    return SentenceTransformerDataCollator(preprocess_fn=model.preprocess, prompts=prompts or {})


def _iter_rows(shard: Any, shuffle_buffer: int, seed: int) -> Iterator[dict[str, Any]]:
    """Rows of a dataset shard as plain Python dicts, locally shuffled from `seed`."""
    kwargs: dict[str, Any] = {"batch_size": ROWS_PER_READ, "batch_format": "numpy"}
    if shuffle_buffer > 0:
        kwargs.update(local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=seed)
    for batch in shard.iter_batches(**kwargs):
        yield from columns_to_rows(batch)


def _to_device(features: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def _autocast(device: Any, dtype: Any):
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _call_loss(loss_fn: Any, features: list[Any], labels: Any, batch: dict[str, Any]):
    """One loss value, as sentence-transformers' trainers compute it (cross-encoders get prompt and task)."""
    import torch

    if "prompt" in batch or "task" in batch:
        value = loss_fn(features, labels, prompt=batch.get("prompt"), task=batch.get("task"))
    else:
        value = loss_fn(features, labels)
    if isinstance(value, dict):  # losses that report components return them by name
        value = torch.stack(list(value.values())).sum()
    return value


def _point_loss_at(loss: Any, wrapped: Any, model: Any) -> None:
    """Make a loss (and any loss it wraps) call the DDP-wrapped model, as the ST trainer does.

    DDP does not expose the model's own methods, so the ones losses call are bound onto it.
    """
    import torch

    if wrapped is model:
        return
    for attr in ("preprocess", "get_embedding_dimension", "num_labels", "tokenizer"):
        if hasattr(model, attr) and not hasattr(wrapped, attr):
            setattr(wrapped, attr, getattr(model, attr))
    for name, child in list(loss.named_children()):
        if child is model:
            loss.model = wrapped
        elif isinstance(child, torch.nn.Module) and name != "guide":
            _point_loss_at(child, wrapped, model)


@contextlib.contextmanager
def _evaluation_view(loss: Any, model: Any) -> Iterator[None]:
    """Run a loss on the unwrapped model without cross-worker gathering (no collective in eval)."""
    import torch

    saved: list[tuple[Any, str, Any]] = []

    def visit(module: Any) -> None:
        if getattr(module, "gather_across_devices", False):
            saved.append((module, "gather_across_devices", True))
            module.gather_across_devices = False
        for name, child in list(module.named_children()):
            if name == "model" and child is not model:
                saved.append((module, "model", child))
                module.model = model
            elif isinstance(child, torch.nn.Module) and name not in ("model", "guide"):
                visit(child)

    visit(loss)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def _evaluate(cfg, model, eval_losses, evaluators, columns, collator, with_name, rank, world_size, device, amp_dtype) -> dict[str, float]:
    """Eval loss over every worker's eval shard (averaged with all_reduce) and the evaluators on rank 0."""
    import ray.train
    import torch
    import torch.distributed as dist

    metrics: dict[str, float] = {}
    model.eval()
    is_cross = cfg.model.type == "cross_encoder"
    batch_size = cfg.args.per_device_eval_batch_size
    per_set = []
    with torch.no_grad():
        for name, loss_fn in eval_losses.items():
            inputs = _inputs(columns[shard_name("eval", name)], cfg.model.type)
            totals = torch.zeros(2, dtype=torch.float64, device=device)  # sum of batch losses x rows, rows
            shard = ray.train.get_dataset_shard(shard_name("eval", name))
            with _evaluation_view(loss_fn, model):
                for raw in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
                    rows = columns_to_rows(raw)
                    batch, features = collate(rows, inputs, collator, name if with_name else None)
                    labels = batch.get("label")
                    if not is_cross:
                        features = [_to_device(f, device) for f in features]
                    labels = labels.to(device) if isinstance(labels, torch.Tensor) else labels
                    with _autocast(device, amp_dtype):
                        value = _call_loss(loss_fn, features, labels, batch)
                    totals += torch.tensor([float(value) * len(rows), len(rows)], dtype=torch.float64, device=device)
            if world_size > 1:
                dist.all_reduce(totals)
            mean = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
            per_set.append(mean)
            if len(eval_losses) > 1:
                metrics[f"eval_{name}_loss"] = round(mean, 6)
        if per_set:
            metrics["eval_loss"] = round(sum(per_set) / len(per_set), 6)
        results: dict[str, float] = {}
        if evaluators:
            from sentence_transformers.evaluation import SequentialEvaluator

            found = SequentialEvaluator(evaluators)(model)
            if len(evaluators) == 1:
                found.pop("sequential_score", None)
            results = {f"eval_{k}": float(v) for k, v in found.items()}
        if cfg.evaluators and world_size > 1:
            box = [results]
            dist.broadcast_object_list(box, src=0)
            results = box[0]
        metrics.update(results)
    return metrics


def _build_evaluators(cfg: TrainConfig) -> list[Any]:
    if not cfg.evaluators:
        return []
    from raytune_st.evaluation.job import build_evaluators

    return build_evaluators(cfg.evaluators)


def _gather_worker_state(
    batchers: dict[str, tuple[ShardBatcher, int]], epoch: int, rank: int, world_size: int
) -> tuple[DataPosition, list[dict[str, Any]]]:
    """Every worker's rows read, still-buffered rows and generator states, collected for the checkpoint."""
    import torch.distributed as dist

    position = {
        name: {"rows_read": skipped + batcher.rows_read, "pending": batcher.pending()}
        for name, (batcher, skipped) in batchers.items()
    }
    mine = (position, capture_rng_state())
    if world_size == 1:
        gathered: list[Any] = [mine]
    else:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, mine)
    return DataPosition(epoch=epoch, workers=[p for p, _ in gathered]), [r for _, r in gathered]


def _worker_agreement(
    step: int, padded_earlier: int, batchers: dict[str, tuple[ShardBatcher, int]], world_size: int, device: Any
) -> dict[str, int]:
    """At the end: the fewest and most steps any worker ran (equal, or DDP would have hung) and the
    batches padded on short shards, summed over workers."""
    import torch
    import torch.distributed as dist

    padded = padded_earlier + sum(batcher.padded_batches for batcher, _ in batchers.values())
    low = torch.tensor([step], device=device)
    high = torch.tensor([step], device=device)
    total = torch.tensor([padded], device=device)
    if world_size > 1:
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(total)
    return {"worker_steps_min": int(low), "worker_steps_max": int(high), "padded_batches": int(total)}


def _loss_owned_state(loss: Any, owned: list[Any]) -> dict[str, Any]:
    """The trainable weights a loss owns itself (not the model's), e.g. SoftmaxLoss's classifier."""
    ids = {id(p) for p in owned}
    return {key: p.detach().cpu() for key, p in loss.named_parameters() if id(p) in ids}


def _unique(params: Iterator[Any]) -> list[Any]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _decay_groups(model: Any, extra: list[Any], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups as transformers' Trainer makes them: no decay on biases and norms."""
    from transformers.trainer_pt_utils import get_parameter_names

    import torch

    decay_names = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay_names] + [p for p in extra if p.dim() > 1], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay_names] + [p for p in extra if p.dim() <= 1], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
