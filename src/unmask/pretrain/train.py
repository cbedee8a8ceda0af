"""Training: `setup` builds everything a run needs into a `Run` (`unmask.pretrain.step`); `train` is the loop.

Per step, top to bottom: set the learning rate, draw and mask the step's micro-batches,
forward and backward each (loss normalised by the masked tokens of the whole step, over all
processes), clip, check, step, log, evaluate, checkpoint. Everything a resumed run needs
(weights, optimizer state, data position) is in the checkpoint, and the random numbers are
functions of (seed, step, window, position), so an interrupted and resumed run ends with
the same weights as one that ran straight through.

Under torchrun every process runs this same loop on its own share of each global batch
(`data.windows.rank_share`); `distributed` holds the process-group plumbing.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unmask.config import TrainConfig, parse_preset, parse_sources, parse_weights, save_yaml, to_dict
from unmask.config.schedule import warmup_warnings
from unmask.data.masking import Masker
from unmask.data.mixture import MixSchedule, MixtureSampler, WindowMix, temperature_weights
from unmask.data.store import TokenStore
from unmask.data.tokenizer import Vocabulary, load_tokenizer
from unmask.data.windows import DataPosition, Windows
from unmask.errors import UnmaskError
from unmask.models.attention import attention_of, refuse_unavailable
from unmask.models.masked_lm import (
    MaskedLM,
    build_mlm,
    check_model_settings,
    check_scratch,
    extend_positions,
    load_mlm,
    max_positions,
    set_dropout,
)
from unmask.pretrain.plan import estimate_lines, estimate_memory, measure_plan, speed_means
from unmask.pretrain.step import (
    Drawer,
    Evaluator,
    Run,
    StepState,
    build_optimizer,
    due_to_checkpoint,
    due_to_evaluate,
    due_to_settle,
    evaluate,
    save_checkpoint,
    score_downstream,
    settle_or_stop,
    spend,
    stop_after_dropped_step,
    train_step,
)
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.runtime.hardware import Peak, Precision, choose_precision, make_deterministic, peak_flops, reset_peak_memory
from unmask.runtime.metrics import MetricsLog
from unmask.runtime.persist import save_base, save_final_model
from unmask.runtime.preemption import StepDropped, Stopped, StopSignals
from unmask.runtime.progress import Progress, Throughput
from unmask.runtime.resume import check_run_folder, refuse_changed_stores, refuse_foreign_folder, restore
from unmask.runtime.stepping import Tally
from unmask.runtime.tracking import Trackers
from unmask.storage import checkpoint
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.files import FolderLock, atomic_write_text
from unmask.storage.names import ModelSource, resolve_model
from unmask.storage.rundir import RunDir


def _trained_length(source: ModelSource, lm: MaskedLM) -> int | None:
    """The window length a model was trained at: its run's --seq-len when it comes from an
    unmask run, else the positions a learned table holds (None: unknown)."""
    run = RunDir(Path(source.folder).parent)
    if run.config.is_file():
        return run.read_settings().get("seq_len")
    if lm.architecture is not None and lm.architecture.positions == "learned":
        return max_positions(lm)
    return None


def _load_model_and_tokenizer(config: TrainConfig, store: TokenStore, vocab: Vocabulary, device: torch.device, echo: Callable[[str], None]):
    """The model and its tokenizer, and the window length the model had before this run
    (None for a fresh model); positions extended to --seq-len where needed."""
    trained_length = None
    if config.model is not None:
        source = resolve_model(config.model)  # once, so that the tokenizer and the weights come from the same folder
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        lm = load_mlm(
            source,
            config.trust_remote_code,
            echo=echo,
            init_seed=config.seed,
            seq_len=config.seq_len,
            rope_theta=config.rope_theta,
        )
        trained_length = _trained_length(source, lm)
        used_by, remedy = f"the model '{config.model}'", config.model
    else:
        tokenizer = load_tokenizer(config.tokenizer or str(store.tokenizer_path), config.trust_remote_code)
        _, size = parse_preset(config.from_scratch)
        lm = build_mlm(size, vocab, config.seq_len, config.seed, config.scratch_architecture(), config.rope_theta)
        used_by, remedy = f"the tokenizer '{config.tokenizer or store.tokenizer_name}'", config.tokenizer
    store.require_tokenizer(tokenizer, used_by, f"run `unmask prepare ... --tokenizer {remedy}` first")
    extended = extend_positions(lm, config.seq_len)
    if extended:
        echo(f"note: {extended}")
    return tokenizer, lm, trained_length


def mix_schedule(config: TrainConfig, parts: list[Windows]) -> MixSchedule:
    """The stores' weights over the run: --mix, --mix-temperature, or by size."""
    names = [name for name, _ in parse_sources(config.data)]
    if config.mix:
        start = np.asarray(parse_weights(config.mix, names))
    else:
        start = temperature_weights([len(p) for p in parts], config.mix_temperature or 1.0)
    end = np.asarray(parse_weights(config.mix_end, names, "--mix-end")) if config.mix_end else None
    return MixSchedule(start, end, config.mix_schedule, config.mix_switch)


def _warn_about_repeats(run: Run, echo: Callable[[str], None]) -> None:
    windows, per_step = len(run.drawer.train_windows), run.global_batch
    if per_step > windows:
        echo(
            f"warning: a step takes {per_step} windows but the store has only {windows} training windows, so every step "
            f"sees each window {per_step / windows:.1f} times; add text or lower --batch-size / --grad-accum / --seq-len"
        )
    if len(run.drawer.train_windows.parts) > 1 and run.total_steps:
        for name, epochs in zip(run.drawer.train_windows.names, run.drawer.sampler.expected_epochs(run.total_steps, per_step)):
            if epochs > 1:
                echo(
                    f"note: --data {name} will be seen {epochs:.1f} times over the run (its windows repeat); the others' weights or its size decide that"
                )


def _accumulation(run: Run) -> str:
    """How a step's windows are made up, where it is more than one micro-batch."""
    c, world = run.config, run.world
    if c.grad_accum == 1 and not world.distributed:
        return ""
    processes = f" x {world.size} processes" if world.distributed else ""
    return f" ({run.global_batch} windows = {c.batch_size} x {c.grad_accum} micro-batch{'es' if c.grad_accum > 1 else ''}{processes})"


def setup(config: TrainConfig, echo: Callable[[str], None] = print, score_checkpoint: Callable[[int, int, str], str] | None = None) -> Run:
    """Join the process group, check the run folder, load the data and the model, wrap it,
    build the optimizer and the sampler, and restore the newest checkpoint when resuming.
    `score_checkpoint` is the --downstream hook (see `Run.score_checkpoint`)."""
    # Stores, then settings only a model's config can refuse, before the run folder is touched.
    stores = [(name, TokenStore.open(path)) for name, path in parse_sources(config.data)]
    if config.from_scratch is not None:
        check_scratch(config.scratch_architecture(), config.rope_theta)
    else:
        check_model_settings(config.model, config.seq_len, config.rope_theta, config.trust_remote_code)
    if config.downstream and score_checkpoint is None:
        raise UnmaskError(
            "--downstream: scoring checkpoints during training needs the hook that unmask.train builds (call unmask.train, not unmask.pretrain.train)"
        )
    if config.deterministic:
        make_deterministic()  # before the first CUDA call: cuBLAS reads its workspace setting then
    world, device = distributed.join(config.device, config.collective_timeout)
    refuse_unavailable(config.attention, device)  # what the model's class and dropout refuse waits for the model
    precision = choose_precision(device, config.precision)
    peak = peak_flops(device, precision.dtype, config.peak_tflops)  # a --peak-tflops that is not this device stops here
    echo = echo if world.is_main else (lambda _: None)
    run_dir = RunDir(Path(config.out))
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise UnmaskError(f"--out {run_dir.path}: is a file, not a run folder")
    refuse_foreign_folder(run_dir)
    lock = None
    if world.is_main:  # one run at a time in a folder; the lock dies with the process that holds it
        lock = FolderLock(run_dir.lock, f"unmask train{' --resume' if config.resume else ''}")
        lock.acquire()
        checkpoint.clean_up(run_dir)
    try:
        return _setup(config, stores, echo, world, device, (precision, peak), run_dir, lock, score_checkpoint)
    except BaseException:
        if lock is not None:
            lock.release_after_failed_start()
        raise


def _setup(
    config: TrainConfig,
    stores: list[tuple[str, TokenStore]],
    echo: Callable[[str], None],
    world: World,
    device: torch.device,
    arithmetic: tuple[Precision, Peak],
    run_dir: RunDir,
    lock: FolderLock | None,
    score_checkpoint: Callable[[int, int, str], str] | None,
) -> Run:
    config = config.with_global_batch(world.size)
    precision, peak = arithmetic
    check_run_folder(run_dir, config, echo)
    store = stores[0][1]
    vocab = _checked_vocabulary(config, stores)
    # Resuming, the weights come from the checkpoint: what loading the model says of the weights
    # it lacked (a fresh MLM head) is held back, and said only if there is no checkpoint yet.
    held: list[str] = []
    tokenizer, lm, trained_length = _load_model_and_tokenizer(config, store, vocab, device, held.append if config.resume else echo)
    if not config.attention_across_docs:
        lm.require_documents_apart()
    extended_from = trained_length if trained_length and trained_length < config.seq_len else None
    eval_lengths = sorted({*config.eval_seq_len, *([extended_from] if extended_from else [])} - {config.seq_len})
    if extended_from and extended_from not in config.eval_seq_len:
        echo(f"note: training at {config.seq_len} tokens a window, longer than the {extended_from} the model had: evaluating at both")
    strategy, model, optimizer = _placed(config, lm, world, device, precision, echo)

    parts, val_windows, other_lengths = _windows_of(config, stores, vocab, eval_lengths)
    train_windows = WindowMix([name for name, _ in stores], parts)
    total_steps = config.total_steps(len(train_windows), world.size)
    masker = Masker(  # on the host: masks are hashes, and the host must know where they fall (`Drawer`)
        vocab,
        seed=config.seed,
        strategy=config.masking,
        mask_prob=config.mask_prob,
        mask_replace_prob=config.mask_replace_prob,
        random_replace_prob=config.random_replace_prob,
    )
    resumed = _restore_or_start(config, run_dir, (lm, optimizer, tokenizer), strategy, world, device, echo, stores, parts, held)
    positions = [DataPosition(*where) for where in resumed.data_positions()]
    sampler = MixtureSampler(train_windows, config.seed, mix_schedule(config, parts), positions)
    trackers = Trackers(config.report_to, run_dir, to_dict(config), resumed.step, enabled=world.is_main) if config.report_to else None
    metrics = MetricsLog(run_dir, resume_step=resumed.step, enabled=world.is_main, trackers=trackers)
    try:
        run = Run(
            config=config,
            run_dir=run_dir,
            world=world,
            strategy=strategy,
            device=device,
            precision=precision,
            peak=peak,
            tokenizer=tokenizer,
            lm=lm,
            model=model,
            optimizer=optimizer,
            drawer=Drawer(config, world, device, sampler, train_windows, masker, lm),
            evaluator=Evaluator(config, world, device, lm, val_windows, other_lengths, metrics),
            total_steps=total_steps,
            warmup_steps=config.warmup(total_steps),
            metrics=metrics,
            lock=lock,
            score_checkpoint=score_checkpoint,
            budget=config.budget_seconds(),
            state=StepState(
                Tally(device, resumed.skipped_steps), step=resumed.step, spent=resumed.train_seconds, spent_here=resumed.train_seconds
            ),
        )
        _announce(run, echo)
    except BaseException:
        # The loop's `finally` closes the trackers once it runs; until then a failure here must,
        # since a process under torchrun ends without Python's shutdown, whose hooks wandb relies on.
        metrics.close()
        raise
    return run


def _placed(config: TrainConfig, lm: MaskedLM, world: World, device: torch.device, precision: Precision, echo):
    """The model made ready to train: its dropout set, on the device, checkpointed or compiled
    as asked, wrapped or sharded for the processes; and its optimizer. Returns (strategy, the
    module a step calls, optimizer)."""
    if config.dropout is not None:
        set_dropout(lm, config.dropout)
    attention, why = attention_of(
        config.attention, device, lm.model, config.dropout, precision.dtype, config.deterministic
    )  # refused here, before the run folder is written
    lm.use_attention(attention)
    strategy = distributed.resolve_strategy(config.strategy, world)
    echo(f"precision: {precision.reason}")
    echo(why)
    lm.to(device).train()
    if config.activation_checkpointing:
        lm.enable_activation_checkpointing()
    if config.compile:
        lm.compile_encoder()
    model = distributed.parallelize(lm, strategy, device, precision.dtype)
    return strategy, model, build_optimizer(lm, config, device)


def _restore_or_start(config, run_dir, trained, strategy, world, device, echo, stores, parts, held) -> CheckpointInfo:
    """Where the run begins: the checkpoint restored into the model and optimizer (refusing a
    store that changed under it), or step 0, saying then what loading held back. Rank 0 then
    writes the run folder's base model and config.yaml, after every process has checked it."""
    lm, optimizer, tokenizer = trained
    resumed = restore(run_dir, config, lm, optimizer, strategy, world, device, echo) if config.resume else None
    if resumed is not None:
        refuse_changed_stores(resumed, stores, [len(part) for part in parts])
    for line in held if resumed is None else []:
        echo(line)
    distributed.barrier(world)  # every process has checked the folder before rank 0 writes into it
    if world.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        save_base(lm, tokenizer, run_dir)
        save_yaml(dataclasses.replace(config, resume=False), run_dir.config)  # what the run is, not how it was last launched
    return resumed or CheckpointInfo(step=0)


def _checked_vocabulary(config: TrainConfig, stores: list[tuple[str, TokenStore]]) -> Vocabulary:
    """The vocabulary the stores share, refusing stores of other tokenizers and a vocabulary
    with no mask token."""
    store = stores[0][1]
    for _, other in stores[1:]:
        if other.fingerprint != store.fingerprint:
            raise UnmaskError(
                f"--data: {other.path} was made with tokenizer '{other.tokenizer_name}' and {store.path} with '{store.tokenizer_name}', "
                "which map text to other ids; the stores of one run must share a tokenizer"
            )
    vocab = store.vocabulary()
    vocab.require_mask(f"--data {store.path}")
    return vocab


def _windows_of(config: TrainConfig, stores: list[tuple[str, TokenStore]], vocab: Vocabulary, eval_lengths: list[int]):
    """Each store's training windows, its held-out windows, and its held-out windows at each
    other evaluation length; a store too small for one training window is refused."""
    parts = [Windows.build(each.split("train"), config.seq_len, vocab, packing=config.packing) for _, each in stores]
    for (_, each), part in zip(stores, parts):
        if len(part) == 0:
            raise UnmaskError(
                f"--data {each.path}: {each.meta['splits']['train']['tokens']} training tokens make no window of --seq-len {config.seq_len}"
            )

    def held_out(length: int) -> dict[str, Windows]:
        return {name: Windows.build(each.split("val"), length, vocab, packing=config.packing, keep_partial=True) for name, each in stores}

    return parts, held_out(config.seq_len), {length: held_out(length) for length in eval_lengths}


def _announce(run: Run, echo: Callable[[str], None]) -> None:
    """What the run will do, before its first step: repeats, warmup warnings, the estimates, and
    one line of what trains on what."""
    config, total_steps = run.config, run.total_steps
    _warn_about_repeats(run, echo)
    shape = {"min_ratio": config.min_lr_ratio, "decay_fraction": config.decay_fraction, "warmup_start": config.warmup_start_ratio}
    for warning in warmup_warnings(total_steps, run.warmup_steps, config.lr, config.schedule, **shape):
        echo(f"warning: {warning}" + (f" (--recipe {config.recipe} sets its warmup for the paper's run length)" if config.recipe else ""))
    for line in estimate_lines(run):
        echo(line)
    processes = f" on {run.world.size} processes ({run.strategy})" if run.world.distributed else ""
    length = f"{total_steps} steps" if total_steps else f"{config.time_budget} of training"
    length += f" (or {config.time_budget}, whichever ends first)" if total_steps and config.time_budget else ""
    parameters = sum(p.numel() for p in run.lm.parameters()) / 1e6
    echo(
        f"training {type(run.lm.model).__name__} ({parameters:.1f}M parameters) on {run.device}{processes}"
        f"{' with bf16' if run.precision.dtype else ' in fp32'}: {length} of {run.global_batch} x {config.seq_len} tokens{_accumulation(run)},"
        f" {len(run.drawer.train_windows)} training windows, {sum(len(v) for v in run.evaluator.val_windows.values())} held-out windows"
    )


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    score_checkpoint: Callable[[int, int, str], str] | None = None,
) -> dict:
    """Run (or resume) training as `config` says; returns the summary also saved as summary.json.

    `clock` measures the training time a --time-budget counts (tests pass a fake one).
    """
    with distributed.timeouts_as_errors(config.collective_timeout):
        if config.plan:  # a few measured steps in a scratch folder; the plan, not a summary
            return measure_plan(config, setup, echo)
        return _train(config, progress, echo, on_step, clock, score_checkpoint)


def _train(config: TrainConfig, progress: bool, echo, on_step, clock, score_checkpoint) -> dict:
    run = setup(config, echo, score_checkpoint)
    state = run.state
    reset_peak_memory(run.device)  # the run's peak, not loading's or an earlier run's in this process
    try:
        display = Progress(config.progress if progress else "none", run.total_steps, state.step, echo, enabled=run.world.is_main)
        speed = Throughput(run.world.size, run.peak.flops, remeasure=run.peak_past)
        last_eval: dict = {}
        with StopSignals(announce=run.world.is_main, launcher_death=distributed.launched_by_torchrun()) as signals:
            try:
                while not run.finished():
                    began = clock()
                    # lr and dropout's seed, draw, forward and backward, clip and step, count: nothing reads the device
                    lr = train_step(run, signals, display.within_step)
                    logged = None
                    if due_to_settle(run):  # the one wait for the device: a log line, evaluation, checkpoint or the end
                        numbers = speed.measure(settle_or_stop(run))  # tokens/s, MFU, data wait, padding, memory
                        reset_peak_memory(run.device)  # each line's memory is the peak of its own steps
                        epoch = run.drawer.sampler.position.epoch
                        logged = {"step": state.step, "lr": lr, **numbers, "mask_prob": run.drawer.last_mask_prob, "epoch": epoch}
                    spend(run, clock() - began)
                    if logged is not None:
                        run.metrics.write({**logged, "train_seconds": state.spent})
                    display.step(state.step, logged, run.progress())
                    with speed.paused():
                        if due_to_evaluate(run):
                            last_eval = evaluate(run, display.echo) or last_eval
                        if due_to_checkpoint(run):
                            saved = save_checkpoint(run)
                            score_downstream(run, display.echo)
                        if state.signal:
                            display.close()
                            raise Stopped(state.signal, state.step, saved)
                    if on_step is not None:
                        on_step(state.step)
            except StepDropped:  # a stop signal mid-step: its partial gradients are gone, the data rewound
                display.close()
                raise stop_after_dropped_step(run) from None
        display.close()
        return finish(run, last_eval, display)
    finally:
        run.metrics.close()
        if run.lock is not None:
            run.lock.release()


def finish(run: Run, last_eval: dict, display: Progress) -> dict:
    """Final evaluation, checkpoint, model and summary. A finished run resumed (to redo a
    final model save that a crash interrupted) keeps the evaluation it already logged."""
    last_eval = run.metrics.eval_at(run.state.step) or evaluate(run, display.echo) or last_eval
    save_checkpoint(run)
    save_final_model(run.lm, run.tokenizer, run.strategy, run.world, run.run_dir.model)
    score_downstream(run, display.echo)
    summary = {
        "steps": run.state.step,
        "tokens_per_step": run.global_batch * run.config.seq_len,
        "train_tokens": run.tokens_seen(),
        **{k: v for k, v in last_eval.items() if k != "step"},
        "device": str(run.device),
        "processes": run.world.size,
        "strategy": run.strategy,
        "precision": run.precision.name,
        "precision_reason": run.precision.reason,
        "deterministic": run.config.deterministic,
        **speed_means(run.run_dir.read_metrics()[0] if run.world.is_main else []),
        "memory_estimate_gib": estimate_memory(run).total / 2**30,
        "peak_tflops": run.peak.flops / 1e12,
        "peak_source": run.peak.source,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if run.world.is_main:
        atomic_write_text(run.run_dir.summary, json.dumps(summary, indent=2))
    display.echo(f"model saved to {run.run_dir.model} (loads with transformers' from_pretrained)")
    distributed.barrier(run.world)
    return summary
