"""The training loop that runs on every worker, read top to bottom.

:func:`run_worker` takes a :class:`~raytune_st.train.world.LoopPlan` (the checked config and
what pre-flight learnt about the data) and a :class:`~raytune_st.train.world.World` (rank,
device, data shards, the checkpoint to resume from, where reports go). On a cluster the world
is Ray Train's (train/ray_world.py: what TorchTrainer runs for the train job and for every
Ray Tune trial); in tests it is an in-process one (train/world.py). No Ray here.

The data sets arrive as shards named ``train_<name>`` and ``eval_<name>`` (:func:`shard_name`).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Iterator, Optional

from raytune_st.config.core import dump_yaml
from raytune_st.evaluation.run import build_evaluators, run_evaluators
from raytune_st.train.artifacts import final_metrics
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
from raytune_st.train.config import TrainConfig
from raytune_st.train.energy import EnergyTracker
from raytune_st.train.plan import total_optimizer_steps
from raytune_st.train.steps import check_metric_reported, completes_epoch, improves, step_actions
from raytune_st.train.trackers import resolve_report_to
from raytune_st.train.world import LoopPlan, World, shard_name

ROWS_PER_READ = 256  # rows fetched from a shard at a time; batching happens afterwards


def run_worker(plan: LoopPlan, world: World) -> Any:
    """Train this worker's part of the run; returns the trained (unwrapped) model."""
    import torch
    from transformers import set_seed

    # 1. Unpack: the typed config, this worker's place in the group.
    config = plan.config
    args = config.args
    worker = WorkerContext.of(config, plan.columns, world)
    set_seed(args.seed)

    # 2. This worker's shards, opened before the model loads: a Ray Data stream takes seconds to
    #    start (tasks start, files are listed and read), and it starts reading now, meanwhile.
    streams = TrainStreams(config, worker, plan.train_rows)

    # 3. The model and where training starts: the last checkpoint when the run was restarted, else
    #    the checkpoint the run starts from (a PBT trial cloning a better one), else the config.
    own_checkpoint = world.restored_checkpoint()
    checkpoint = own_checkpoint or plan.initial_checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = read_checkpoint(path)
            batchers = streams.open_at(state)
            model = _load_model(config, os.path.join(path, MODEL_DIR))
    else:
        state = TrainingState()
        batchers = streams.open_at(state)
        model = config.model.load()

    # 4. Losses, DDP, optimizer, scheduler and scaler, restored from the checkpoint; the collator
    #    and (on rank 0) the evaluators.
    run = setup(config, model, state, worker, streams, batchers)
    data_files = plan.data_files
    if state.step >= run.total_steps:
        _report_finished(run, state, config, worker, data_files, started_here=own_checkpoint is None)
        return run.model
    if len(state.rng) == worker.world_size:
        # Last, after everything that draws random numbers while setting up (a loss's new
        # classifier, the model's head): dropout and the rest continue exactly where the
        # checkpointed run was, so a resumed run repeats the uninterrupted one's losses.
        restore_rng_state(state.rng[worker.rank])

    energy = None
    if "codecarbon" in resolve_report_to(args.report_to):
        energy = EnergyTracker(args.run_name or config.run.name, measure=world.local_rank == 0)

    # 5. The loop: gradient_accumulation_steps micro-batches per optimizer step, each from the
    #    data set the shared schedule names, so every worker runs exactly the same steps.
    schedule = streams.schedule
    step, micro = state.step, state.micro_batches
    history = state.history
    resumed_from = step if checkpoint is not None else None
    padded_earlier = 0  # batches padded on a short shard in earlier epochs of this process
    epoch = schedule.epoch_of(micro)
    running_loss = torch.zeros((), device=worker.device)
    running_count = 0
    grad_norm = None
    start = time.perf_counter()
    samples = 0
    run.ddp_model.train()
    while step < run.total_steps:
        micro_before = micro
        for k in range(args.gradient_accumulation_steps):
            if schedule.epoch_of(micro) != epoch:
                epoch = schedule.epoch_of(micro)
                padded_earlier += sum(batcher.padded_batches for batcher, _ in batchers.values())
                batchers = streams.open_epoch(epoch, {})
            name = schedule.dataset_at(micro)
            rows = batchers[name][0].next_batch()
            last = k == args.gradient_accumulation_steps - 1
            sync = contextlib.nullcontext() if last or worker.world_size == 1 else run.ddp_model.no_sync()
            with sync:
                loss = worker.loss_step(run.losses[name], rows, streams.inputs[name], name) / args.gradient_accumulation_steps
                run.scaler.scale(loss).backward()
            running_loss += loss.detach()
            micro += 1
            samples += len(rows)
        running_count += 1
        grad_norm = _optimizer_step(run, args, worker)
        step += 1

        # 6. Log, evaluate, checkpoint: the same decisions on every worker (they share step and schedule).
        actions = step_actions(
            step,
            total_steps=run.total_steps,
            epoch_done=completes_epoch(micro_before, micro, schedule.epoch_length),
            args=args,
            has_eval=config.has_eval,
        )
        save = actions.save
        metrics: dict[str, Any] = {}
        if actions.log:
            metrics.update(_train_metrics(run, worker, running_loss, running_count, micro / schedule.epoch_length, grad_norm))
            elapsed = time.perf_counter() - start
            metrics["train_samples_per_second"] = round(samples * worker.world_size / elapsed, 3) if elapsed > 0 else None
            running_loss.zero_()
            running_count = 0
        if actions.evaluate:
            metrics.update(_evaluate(worker, run))
            run.ddp_model.train()
            if args.metric_for_best_model and worker.rank == 0:
                check_metric_reported(args.best_metric, metrics)
            if args.save_strategy == "best" and args.best_metric in metrics:
                if improves(metrics[args.best_metric], state.best_value, args.higher_is_better):
                    state.best_value = metrics[args.best_metric]
                    save = True
        if resumed_from is not None and metrics:
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if step == run.total_steps:
            metrics.update(_worker_agreement(step, padded_earlier, batchers, worker))
            if energy is not None:
                metrics.update(energy.finish(worker.world_size, worker.device))
        if not metrics and not save:
            continue
        metrics.update(step=step)
        if worker.rank == 0:
            history.append(dict(metrics))
        checkpoint_dir = None
        if save:
            state.step, state.micro_batches, state.history = step, micro, history
            checkpoint_dir = _save(run, state, batchers, epoch, worker, data_files)
        world.report(metrics, checkpoint_dir, checkpoint_name(step) if save else None)
    return run.model


def checkpoint_name(step: int) -> str:
    """A checkpoint's directory name: sorted by name is sorted by step."""
    return f"checkpoint-{step:06d}"


# --- setup: the worker's place, its data streams, and what it trains ------------------------


@dataclass
class WorkerContext:
    """This worker's place in the group, and how it turns rows into a loss value."""

    config: TrainConfig
    columns: dict[str, list[str]]  # per shard name (see shard_name)
    world: World
    amp_dtype: Any  # torch.float16 / torch.bfloat16 under fp16 / bf16, else None
    collator: Any = None  # set by setup(), once the model exists
    with_name: bool = False  # the prompts are keyed by data set name

    @classmethod
    def of(cls, config: TrainConfig, columns: dict[str, list[str]], world: World) -> "WorkerContext":
        import torch

        args = config.args
        amp_dtype = torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else None
        return cls(config, columns, world, amp_dtype)

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def device(self) -> Any:
        return self.world.device

    def inputs(self, section: str, name: str) -> list[str]:
        """The text columns of a data set, in the order its loss takes them."""
        from raytune_st.losses.formats import split_columns

        return split_columns(self.columns[shard_name(section, name)], self.config.model.type)[0]

    def loss_step(self, loss_fn: Any, rows: list[dict[str, Any]], inputs: list[str], name: str) -> Any:
        """One loss value of a batch of rows: collate (tokenise), move to the device, run the loss
        under autocast. Training and evaluation both go through here."""
        import torch

        batch, features = collate(rows, inputs, self.collator, name if self.with_name else None)
        labels = batch.get("label")
        if self.config.model.type != "cross_encoder":
            features = [_to_device(f, self.device) for f in features]
        labels = labels.to(self.device) if isinstance(labels, torch.Tensor) else labels
        with _autocast(self.device, self.amp_dtype):
            return _call_loss(loss_fn, features, labels, batch)


class TrainStreams:
    """This worker's training shards, batch by batch, epoch by epoch, resumable mid-epoch."""

    def __init__(self, config: TrainConfig, worker: WorkerContext, train_rows: dict[str, int]):
        args = config.args
        self.config, self.worker = config, worker
        per_epoch = batches_per_epoch(train_rows, args.per_device_train_batch_size, worker.world_size)
        self.schedule = Schedule(per_epoch, args.multi_dataset_batch_sampler, args.seed)
        self.inputs = {name: worker.inputs("train", name) for name in config.train_datasets}

    def open_epoch(self, epoch: int, resume: dict[str, dict[str, Any]]) -> dict[str, tuple[ShardBatcher, int]]:
        """A batcher per data set for `epoch`; on resume, each first skips what this worker already read."""
        args, stream = self.config.args, self.config.stream
        batchers = {}
        for name in self.config.train_datasets:
            shard = self.worker.world.shard(shard_name("train", name))
            rows = _iter_rows(shard, stream.shuffle_buffer_size, seed=args.seed + 1000 * epoch + self.worker.rank)
            done = resume.get(name, {})
            batcher = ShardBatcher(
                read_ahead(skip(rows, done.get("rows_read", 0))),
                args.per_device_train_batch_size,
                no_duplicates=self.inputs[name] if args.batch_sampler == "no_duplicates" else None,
                buffer_size=stream.no_duplicates_buffer_size,
                pending=done.get("pending", ()),
            )
            batchers[name] = (batcher, done.get("rows_read", 0))
        return batchers

    def open_at(self, state: TrainingState) -> dict[str, tuple[ShardBatcher, int]]:
        """The batchers of the epoch that `state` is in, where this worker left it."""
        epoch = self.schedule.epoch_of(state.micro_batches)
        resume = state.position.for_rank(self.worker.rank, self.worker.world_size) if state.position.epoch == epoch else {}
        return self.open_epoch(epoch, resume)


@dataclass
class Trainables:
    """What a worker trains with, set up by :func:`setup`."""

    model: Any
    ddp_model: Any
    losses: dict[str, Any]  # per training set, calling ddp_model
    eval_losses: dict[str, Any]  # per eval set
    loss_params: list[Any]  # trainable weights the losses own (outside DDP)
    optimizer: Any
    scheduler: Any
    scaler: Any
    total_steps: int
    evaluators: list[Any]  # on rank 0 only


def setup(
    config: TrainConfig,
    model: Any,
    state: TrainingState,
    worker: WorkerContext,
    streams: TrainStreams,
    batchers: dict[str, tuple[ShardBatcher, int]],
) -> Trainables:
    """Losses (one per data set, built on the unwrapped model), DDP (gloo on CPU, NCCL on GPU) with the
    losses pointed at it so gradients are averaged across workers, HF's AdamW groups, the transformers
    scheduler and the gradient scaler (all restored from `state`), the collator and the evaluators."""
    import torch
    from transformers import get_scheduler

    from raytune_st.losses.build import build_loss

    args = config.args
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if worker.device.type == "cuda":
        torch.cuda.set_device(worker.device)
    model.to(worker.device)
    losses = {}
    for name in config.train_datasets:
        spec = config.loss_for("train_datasets", name)
        losses[name] = build_loss(spec.name, spec.kwargs, model, spec.model_type, world_size=worker.world_size).to(worker.device)
    eval_losses = {}
    train_specs = {name: config.loss_for("train_datasets", name) for name in config.train_datasets}
    for name in config.eval_datasets:
        spec = config.loss_for("eval_datasets", name)
        # Evaluate with a training loss of the same settings (it may own trained weights, e.g.
        # SoftmaxLoss's classifier): the train set of the same name first, else any with that loss.
        shared = name if name in losses else next((n for n, s in train_specs.items() if s == spec), None)
        if shared is not None:
            eval_losses[name] = losses[shared]
        else:
            eval_losses[name] = build_loss(spec.name, spec.kwargs, model, spec.model_type).to(worker.device)
    for name, loss_state in state.losses.items():
        losses[name].load_state_dict(loss_state, strict=False)

    # Batches are tokenised on the worker with sentence-transformers' collator; evaluators run on rank 0.
    worker.collator = make_collator(model, args.prompts, config.model.type == "cross_encoder")
    worker.with_name = wants_dataset_name(args.prompts, list(config.train_datasets) + list(config.eval_datasets))

    ddp_model = model
    if worker.world_size > 1:
        # Reentrant gradient checkpointing cannot run under find_unused_parameters (DDP would mark
        # the recomputed parameters ready twice); otherwise DDP searches for unused parameters only
        # when a first batch shows that the losses leave some unused, since the search costs every step.
        find_unused = False
        if not args.gradient_checkpointing:
            first = {name: batchers[name][0].peek() for name in losses}  # still first in line for training
            find_unused = _on_any_worker(bool(unused_parameters(model, losses, first, streams.inputs, worker)), worker)
        ddp_model = wrap_ddp(model, worker.device, find_unused_parameters=find_unused)
    for loss in losses.values():
        _point_loss_at(loss, ddp_model, model)

    model_ids = {id(p) for p in model.parameters()}
    loss_params = _unique(p for loss in losses.values() for p in loss.parameters() if id(p) not in model_ids and p.requires_grad)
    optimizer = torch.optim.AdamW(
        _decay_groups(model, loss_params, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=args.optim == "adamw_torch_fused",
    )
    total_steps = total_optimizer_steps(args, streams.schedule.epoch_length)
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    scaler = torch.amp.GradScaler(worker.device.type, enabled=args.fp16)
    if state.optimizer is not None:
        _restore_optimization(state, optimizer, scheduler, scaler, args.learning_rate)

    evaluators = build_evaluators(config.evaluators) if worker.rank == 0 and config.evaluators else []
    return Trainables(model, ddp_model, losses, eval_losses, loss_params, optimizer, scheduler, scaler, total_steps, evaluators)


def wrap_ddp(model: Any, device: Any, *, find_unused_parameters: bool) -> Any:
    """`model` in DistributedDataParallel (the process group must exist), its outputs made plain dicts.

    A sentence-transformers model returns what its last module returns; a CrossEncoder hands
    back the tokenizer's BatchEncoding, a mapping but not a dict. DDP looks for the output's
    tensors only in tensors, lists, tuples, dicts and dataclasses, so under
    find_unused_parameters it would find none, mark every parameter unused, and then fail when
    the backward pass marks them ready a second time ("marked as ready twice").
    """
    from torch.nn.parallel import DistributedDataParallel

    model.register_forward_hook(_plain_output)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def _plain_output(module: Any, args: Any, output: Any) -> Any:
    if isinstance(output, Mapping) and not isinstance(output, dict):
        return dict(output)
    return None  # keep the output as it is


def unused_parameters(
    model: Any, losses: dict[str, Any], batches: dict[str, list[dict[str, Any]]], inputs: dict[str, list[str]], worker: WorkerContext
) -> list[str]:
    """The trainable parameters of `model` that some training loss leaves without a gradient (a
    BERT pooler under a mean-pooling bi-encoder, a layer a loss skips), by name.

    Each loss runs forward and backward once on its data set's batch in `batches`, on the
    unwrapped model. Gradients and random states are put back, so the run trains exactly as it
    would without this look.
    """
    rng = capture_rng_state()
    unused: dict[str, None] = {}
    try:
        model.train()
        for name, loss in losses.items():
            worker.loss_step(loss, batches[name], inputs[name], name).backward()
            unused.update((n, None) for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
            loss.zero_grad(set_to_none=True)  # the model's and the loss's own weights
            model.zero_grad(set_to_none=True)
    finally:
        restore_rng_state(rng)
    return list(unused)


def _on_any_worker(flag: bool, worker: WorkerContext) -> bool:
    """Whether `flag` holds on any worker (every worker must wrap the model alike)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=worker.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _restore_optimization(state: TrainingState, optimizer: Any, scheduler: Any, scaler: Any, learning_rate: float) -> None:
    """Load the checkpoint's optimizer, scheduler and scaler states, under this run's hyperparameters.

    A PBT trial resumes a cloned checkpoint with a perturbed learning rate or weight decay, so the
    restored groups take this run's values (a plain resume changes nothing).
    """
    decay = [group["weight_decay"] for group in optimizer.param_groups]
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    scaler.load_state_dict(state.scaler)
    scheduler.base_lrs = [learning_rate] * len(optimizer.param_groups)
    for group, weight_decay, lr_lambda in zip(optimizer.param_groups, decay, scheduler.lr_lambdas):
        group["weight_decay"], group["initial_lr"] = weight_decay, learning_rate
        group["lr"] = learning_rate * lr_lambda(scheduler.last_epoch)


def _report_finished(
    run: Trainables, state: TrainingState, config: TrainConfig, worker: WorkerContext, data_files: Any, *, started_here: bool
) -> None:
    """A run that starts at its last step has nothing left to train; it reports its final metrics once.

    Restored from its own last checkpoint, it reports them without a checkpoint: whoever waits
    for the run gets a result. A Tune trial does: a sweep interrupted after a trial's Train run
    had finished, but before Tune recorded the trial's end, resumes that trial, and Tune refuses
    a trial that ends without a report of its metric. Started from another run's checkpoint
    (PBT cloned a trial that had finished), it reports that checkpoint as its own.
    """
    saves = started_here and worker.rank == 0
    worker.world.report(
        {**final_metrics(state.history), "step": state.step},
        _checkpoint(run.model, state, config, data_files) if saves else None,
        checkpoint_name(state.step) if started_here else None,
    )


# --- the step: optimizer update, metrics, evaluation -----------------------------------------


def _optimizer_step(run: Trainables, args: Any, worker: WorkerContext) -> Optional[float]:
    """Average the loss-owned gradients, unscale, clip, step; returns the gradient norm (None unclipped)."""
    import torch
    import torch.distributed as dist

    if worker.world_size > 1:
        # Loss-owned weights (SoftmaxLoss's classifier, ...) are outside DDP: average by hand.
        for p in run.loss_params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= worker.world_size
    run.scaler.unscale_(run.optimizer)
    grad_norm = None
    if args.max_grad_norm > 0:
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _save(
    run: Trainables, state: TrainingState, batchers: dict[str, tuple[ShardBatcher, int]], epoch: int, worker: WorkerContext,
    data_files: Any,
) -> Any:
    """Every worker's data position and RNG states gathered into `state` with the optimizer, scheduler,
    scaler and loss-owned weights; on rank 0, the checkpoint directory to report (None on the others)."""
    state.position, state.rng = _gather_worker_state(batchers, epoch, worker)
    if worker.rank != 0:
        return None
    state.optimizer, state.scheduler, state.scaler = run.optimizer.state_dict(), run.scheduler.state_dict(), run.scaler.state_dict()
    state.losses = {name: _loss_owned_state(loss, run.loss_params) for name, loss in run.losses.items()}
    return _checkpoint(run.model, state, worker.config, data_files)


def _train_metrics(
    run: Trainables, worker: WorkerContext, running_loss: Any, running_count: int, epoch: float, grad_norm: Optional[float]
) -> dict[str, Any]:
    """The logging step's loss (averaged over its steps and the workers), learning rate, epoch, gradient
    norm and, on a GPU, rank 0's peak GPU memory."""
    import torch.distributed as dist

    mean_loss = running_loss / max(running_count, 1)
    if worker.world_size > 1:
        dist.all_reduce(mean_loss)
        mean_loss /= worker.world_size
    metrics: dict[str, Any] = {
        "loss": round(float(mean_loss), 6),
        "learning_rate": run.scheduler.get_last_lr()[0],
        "epoch": round(epoch, 4),
    }
    if grad_norm is not None:
        metrics["grad_norm"] = round(grad_norm, 6)
    if worker.device.type == "cuda":
        import torch

        # This rank's high-water mark of tensors allocated since the worker started (what OOMs).
        metrics["gpu_memory_peak_mib"] = round(torch.cuda.max_memory_allocated(worker.device) / 2**20, 1)
    return metrics


# --- helpers: small, each does one thing the loop above names ------------------------------


def _checkpoint(model: Any, state: TrainingState, config: TrainConfig, data_files: Any) -> str:
    """`state` and the model written to a fresh local directory; returns the directory."""
    directory = tempfile.mkdtemp(prefix="raytune-st-ckpt-")
    write_checkpoint(directory, model, state, dump_yaml(config), data_files)
    return directory


def _load_model(config: TrainConfig, path: str):
    """The model saved in a checkpoint, with the config's type and sequence length."""
    return config.model.load(path=path)


def make_collator(model: Any, prompts: Any, is_cross: bool):
    """sentence-transformers' data collator of `model` (the cross-encoder's keeps texts, the loss tokenises them)."""
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
            # Under whatever name the loss keeps it (model, sentence_embedder, encoder, ...).
            setattr(loss, name, wrapped)
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
            if child is not model and getattr(child, "module", None) is model:  # the DDP wrapper _point_loss_at set
                saved.append((module, name, child))
                setattr(module, name, model)
            elif isinstance(child, torch.nn.Module) and child is not model and name != "guide":
                visit(child)

    visit(loss)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def _evaluate(worker: WorkerContext, run: Trainables) -> dict[str, float]:
    """Eval loss over every worker's eval shard (averaged with all_reduce) and the evaluators on rank 0."""
    import torch
    import torch.distributed as dist

    metrics: dict[str, float] = {}
    run.model.eval()
    per_set = []
    with torch.no_grad():
        for name, loss_fn in run.eval_losses.items():
            inputs = worker.inputs("eval", name)
            totals = torch.zeros(2, dtype=torch.float64, device=worker.device)  # sum of batch losses x rows, rows
            shard = worker.world.shard(shard_name("eval", name))
            with _evaluation_view(loss_fn, run.model):
                for raw in shard.iter_batches(batch_size=worker.config.args.per_device_eval_batch_size, batch_format="numpy"):
                    rows = columns_to_rows(raw)
                    value = worker.loss_step(loss_fn, rows, inputs, name)
                    totals += torch.tensor([float(value) * len(rows), len(rows)], dtype=torch.float64, device=worker.device)
            if worker.world_size > 1:
                dist.all_reduce(totals)
            mean = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
            per_set.append(mean)
            if len(run.eval_losses) > 1:
                metrics[f"eval_{name}_loss"] = round(mean, 6)
        if per_set:
            metrics["eval_loss"] = round(sum(per_set) / len(per_set), 6)
        results: dict[str, float] = {}
        if run.evaluators:
            results = {f"eval_{k}": v for k, v in run_evaluators(run.evaluators, run.model).items()}
        if worker.config.evaluators and worker.world_size > 1:
            box = [results]
            dist.broadcast_object_list(box, src=0)
            results = box[0]
        metrics.update(results)
    return metrics


def _gather_worker_state(
    batchers: dict[str, tuple[ShardBatcher, int]], epoch: int, worker: WorkerContext
) -> tuple[DataPosition, list[dict[str, Any]]]:
    """Every worker's rows read, still-buffered rows and generator states, collected for the checkpoint."""
    import torch.distributed as dist

    position = {
        name: {"rows_read": skipped + batcher.rows_read, "pending": batcher.pending()}
        for name, (batcher, skipped) in batchers.items()
    }
    mine = (position, capture_rng_state())
    if worker.world_size == 1:
        gathered: list[Any] = [mine]
    else:
        gathered = [None] * worker.world_size
        dist.all_gather_object(gathered, mine)
    return DataPosition(epoch=epoch, workers=[p for p, _ in gathered]), [r for _, r in gathered]


def _worker_agreement(
    step: int, padded_earlier: int, batchers: dict[str, tuple[ShardBatcher, int]], worker: WorkerContext
) -> dict[str, int]:
    """At the end: the fewest and most steps any worker ran (equal, or DDP would have hung) and the
    batches padded on short shards, summed over workers."""
    import torch
    import torch.distributed as dist

    padded = padded_earlier + sum(batcher.padded_batches for batcher, _ in batchers.values())
    low = torch.tensor([step], device=worker.device)
    high = torch.tensor([step], device=worker.device)
    total = torch.tensor([padded], device=worker.device)
    if worker.world_size > 1:
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
