"""The training recipe: one run into a run directory (or a resumed one), and the LR range test.

Python API (``trainwell.train`` also trains ensembles, see :mod:`trainwell.api`)::

    from trainwell.runs.train import train
    run = train({"model.name": "cnn", "train.epochs": 5})
    run.summary["test_acc"], run.dir, run.model
    train(resume=run.dir)                                  # a killed run: continues exactly where it was
    train(resume=run.dir, overrides={"train.epochs": 8})   # a finished one: 3 more epochs (schedule recomputed)

It sits above the doctor (``doctor=true`` and the divergence diagnosis use it) and below the
experiments (compare and the labs run it). ``train`` is wiring: it builds the model, the optimiser, schedule and generators (the loop's
state), the augmenter and the callbacks from the config, then hands them to
:func:`trainwell.train.trainer.fit`.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.console import Console
from torch import nn

from trainwell.config import Config, resolve
from trainwell.data import Splits, load_splits, to_float
from trainwell.errors import ConfigError, Interrupted, RunDirError, exception_line
from trainwell.formatting import percent
from trainwell.nn.pipeline import Classifier, count_parameters
from trainwell.nn.summary import ModelSummary, summarize
from trainwell.seeds import seed_global, torch_generator
from trainwell.train.build import (
    auto_model_line,
    build_augmenter,
    build_classifier,
    check_loop_config,
    check_names,
    model_card,
    model_tag,
    resolve_model_name,
    with_lr,
)
from trainwell.train.callbacks import (
    CsvFile,
    EarlyStopping,
    KeepBest,
    MetricsFile,
    MlflowLog,
    ProgressDisplay,
    TensorBoardLog,
)
from trainwell.train.checkpoint import CHECKPOINT_DIR, Checkpoints
from trainwell.train.distributed import World, check_batch, current_world
from trainwell.train.events import Callback
from trainwell.train.precision import forward_format
from trainwell.train.snapshots import snapshot_callback
from trainwell.train.load import Run, read_card, read_config
from trainwell.train.lr_find import lr_range_test, plot_lr_find
from trainwell.train.plots import plot_curves
from trainwell.train.progress import print_warning
from trainwell.fileio import atomic_write_text, write_json
from trainwell.train.rundir import (
    check_out_dir,
    final_path,
    is_inside,
    prepare_out_dir,
    read_summary,
    save_weights,
    staged_out_dir,
)
from trainwell.train.trainer import (
    BatchOrder,
    LoopSettings,
    build_state,
    catch_signals,
    evaluate_split,
    fit,
    load_callback_states,
    predict_logits,
    resolve_device,
)
from trainwell.runs.report import write_run_report

ConfigLike = Config | dict[str, Any] | list[str] | None
#: The only key ``--resume`` lets change: more epochs for a finished run.
RESUMABLE_KEYS = ("train.epochs",)


def as_config(config: ConfigLike = None, overrides: list[str] | dict[str, Any] | None = None,
              config_file: str | Path | None = None) -> Config:
    """Accept a Config, a dict of dotted keys, a list of ``key=value`` strings, or nothing."""
    if isinstance(config, Config):
        return resolve(overrides, config_file, base=config)
    if isinstance(config, dict):
        base = resolve(config, config_file)
        return resolve(overrides, base=base) if overrides else base
    if isinstance(config, list):
        return resolve(list(config) + list(overrides or []), config_file) if not isinstance(overrides, dict) \
            else resolve(overrides, base=resolve(config, config_file))
    return resolve(overrides, config_file)


def resume_config(run_dir: Path, config: ConfigLike, overrides: list[str] | dict[str, Any] | None,
                  config_file: str | Path | None) -> Config:
    """The run's own config.yaml; only train.epochs may change (to extend a finished run)."""
    from trainwell.config import flatten, parse_override

    if not run_dir.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist; --resume takes a folder written by "
                          "'trainwell train'.")
    if config is not None or config_file is not None:
        raise ConfigError(f"--resume continues '{run_dir}' with its own config.yaml; drop -c/--config.")
    cfg = read_config(run_dir)
    given = flatten(overrides) if isinstance(overrides, dict) else dict(parse_override(o) for o in overrides or [])
    other = [k for k in given if k not in RESUMABLE_KEYS]
    if other:
        raise ConfigError(f"--resume continues '{run_dir}' with its own config.yaml; only train.epochs can change "
                          f"(to train a finished run further), not {other[0]}. Start a new run to change it.")
    return resolve(given, base=cfg) if given else cfg


def resolve_lr(cfg: Config, classifier: nn.Module, splits: Splits, device: torch.device,
               console: Console | None = None) -> tuple[Config, Any]:
    """optim.lr=auto -> the LR range test's suggestion, before anything else sees the config."""
    if cfg.optim.lr != "auto":
        return cfg, None
    found = lr_range_test(classifier, splits, cfg, device)
    if console is not None:
        console.print(f"optim.lr=auto: LR range test suggests {found.suggested_lr:.3g}", highlight=False)
    return with_lr(cfg, found.suggested_lr), found


def _tensorboard_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package; pip install 'trainwell[tensorboard]'."
        ) from None
    return SummaryWriter


def _mlflow_store(cfg: Config, resume: Path | None, main: bool) -> Any:
    """train.log=mlflow: mlflow imported (one line naming the extra when it is missing) and, on rank 0, the
    store opened (an unreachable one is one line); a resumed run's is opened from its mlflow.json later."""
    if "mlflow" not in cfg.train.log:
        return None
    from trainwell.train.tracking import mlflow_module, open_store, read_run_file

    mlflow_module()
    if not main or (resume is not None and read_run_file(resume) is not None):
        return None
    return open_store(cfg.train.mlflow_uri, cfg.train.mlflow_experiment)


@contextlib.contextmanager
def _ending(mlflow_log: MlflowLog | None) -> Iterator[None]:
    """Ends the MLflow run of a run that stops on an exception: KILLED (interrupted) or FAILED."""
    try:
        yield
    except BaseException as exc:
        if mlflow_log is not None:
            mlflow_log.log.end("KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED")
        raise


def _diagnosis(classifier: nn.Module, splits: Splits, cfg: Config, device: torch.device) -> str:
    """The doctor's one-line verdict on the (restored, last good) model, on a training batch."""
    from trainwell.diagnose import diagnose_model

    idx = torch.randperm(len(splits.train), generator=torch_generator(cfg.train.seed, "doctor"))[:256]
    report = diagnose_model(classifier, to_float(splits.train.take(idx)).to(device), splits.train.y[idx].to(device),
                            context="last good checkpoint")
    worst = next((f for f in report.findings if f.severity != "info"), None)
    if worst is None:
        return "the doctor found nothing wrong in the last good state; lower optim.lr or set train.grad_clip=1."
    return f"{worst.code}: {worst.message} Fix: {worst.fix}."


def train(
    config: ConfigLike = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    model: nn.Module | None = None,
    splits: Splits | None = None,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    prepare: Callable[[Classifier], Sequence[Callback] | None] | None = None,
    world: World | None = None,
    hub: dict[str, Any] | None = None,
) -> Run:
    """Train a model from a config and write a complete run directory (or continue one: ``resume``).

    ``model`` replaces the registry's model by any ``nn.Module`` taking (N, *input_shape) floats;
    ``splits`` replaces the configured data source. ``prepare(classifier)`` runs on the built model
    before anything else touches it (e.g. fine-tuning loads pretrained weights and freezes layers)
    and may return callbacks that the loop then also calls (e.g. gradual unfreezing).
    ``resume``: a run folder whose newest good checkpoint the run continues from, with the folder's
    own config (``overrides`` may only set train.epochs, to extend a finished run).
    ``world``: this process's rank in a data-parallel run (default: the process group this process
    joined, if any — :mod:`trainwell.train.distributed`); every rank calls ``train`` with the same
    arguments, only rank 0 writes the run folder and prints.
    ``hub``: ``model`` is a torchvision/timm model; model.json records these fields
    (:func:`trainwell.train.hub.hub_card`), from which :func:`~trainwell.load_run` rebuilds it.
    """
    world = world if world is not None else current_world()
    quiet = quiet or not world.main
    cfg = resume_config(Path(resume), config, overrides, config_file) if resume is not None \
        else as_config(config, overrides, config_file)
    check_names(cfg)
    if cfg.finetune.source and prepare is None:
        raise ConfigError(f"finetune.source={cfg.finetune.source} is a fine-tuning, which this function does not do "
                          "(it trains from scratch); use trainwell.train or trainwell.runs.finetune.train_run.")
    check_ensemble_keys(cfg, custom_model=model is not None, custom_data=splits is not None or prepare is not None)
    if cfg.train.ensemble > 1:
        raise ConfigError(f"train.ensemble={cfg.train.ensemble} trains {cfg.train.ensemble} runs: use trainwell.train "
                          "or the trainwell command, which hand it to the ensemble trainer (trainwell.experiments).")
    if world.distributed:
        check_distributed(cfg, world.size)
    if resume is not None:
        _check_resumable(Path(resume), model, prepare)
    elif out is not None and world.main:  # (rank 0 creates it: the others would find it made)
        check_new_out(Path(out), overwrite, cfg)
    # train.log=mlflow: installed (every rank: they fail alike) and its store usable (rank 0's), before any
    # data is loaded or folder made; a resumed run reopens the store its mlflow.json names.
    store = _mlflow_store(cfg, Path(resume) if resume is not None else None, world.main)
    device = world.device(resolve_device(cfg.train.device))
    console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
    warn = lambda message: print_warning(console, message)  # noqa: E731

    # Construction, visible: data, model, lr, the loop's state (optimiser, schedule, EMA, generators).
    splits = splits if splits is not None else load_splits(cfg.data)
    if model is None:  # model.name=auto: the data's kind decides, here, once; config.yaml records it
        if (line := auto_model_line(cfg, splits)) is not None:
            console.print(line, highlight=False)
        cfg = resolve_model_name(cfg, splits)
    classifier = build_classifier(cfg, splits, model)
    extra_callbacks = list(prepare(classifier) or ()) if prepare is not None else []
    lr_found = None
    if world.main:  # the range test on one rank; the others take its pick
        cfg, lr_found = resolve_lr(cfg, classifier, splits, device, console)
    cfg = world.broadcast(cfg)
    check_loop_config(cfg, splits)
    writer_class = _tensorboard_writer_class() if cfg.train.tensorboard else None
    augment = build_augmenter(cfg, splits)
    flops = summarize(classifier, splits.input_shape)  # FLOPs per example, for summary.json (one process's forward)
    if cfg.train.sync_bn and world.distributed:  # batch statistics over the global batch
        from trainwell.nn.sync_batchnorm import convert_sync_batchnorm

        convert_sync_batchnorm(classifier, device)
    # build_state checks the training settings as it builds them (what preflight checks elsewhere);
    # no folder exists yet. Before the doctor hooks the model.
    state = build_state(classifier, cfg, len(splits.train), device, world=world)
    card = {**model_card(splits, cfg, model is not None and hub is None, hub), "prepared": prepare is not None}
    loaded = None
    if world.main:  # the run folder is rank 0's; the others keep their checkpoints in memory
        if resume is not None:
            out_dir, checkpoints, loaded = _reopen_run_dir(Path(resume), cfg, warn)
        else:
            out_dir = _new_run_dir(out, overwrite, cfg, card, lr_found,
                                   lambda line: console.print(line, highlight=False))
            checkpoints = Checkpoints(out_dir / CHECKPOINT_DIR, cfg.train.keep_checkpoints)
    else:
        checkpoints = Checkpoints(None)
    # Rank 0's folder and checkpoint to every rank (read once: no shared file system needed for it).
    out_dir, loaded = world.broadcast((out_dir, loaded) if world.main else None)

    # The callbacks, in the order they are called: the user's, the run's features, then the logs.
    doctor = None
    if cfg.doctor:
        from trainwell.diagnose import DoctorCallback

        doctor = DoctorCallback(classifier, console=console, peak_lr=float(cfg.optim.lr))
    snapshots = snapshot_callback(cfg, out_dir, card, len(splits.train), fresh=resume is None) \
        if cfg.train.snapshots else None  # the weights at the end of each lr cycle -> out/snapshots/NN
    keep_best = KeepBest() if cfg.train.keep == "best" else None
    # The logs are rank 0's (the others have no state of their own: a checkpoint holds the same callbacks).
    tensorboard = TensorBoardLog(out_dir / "tensorboard", writer_class) \
        if writer_class is not None and world.main else None
    progress = None if quiet else ProgressDisplay(console, cfg.train.epochs, cfg.train.progress and console.is_terminal)
    metrics_file = MetricsFile(out_dir / "metrics.jsonl") if world.main else None
    csv_file = CsvFile(out_dir / "metrics.csv") if world.main and "csv" in cfg.train.log else None
    mlflow_log = None
    if world.main and "mlflow" in cfg.train.log:
        from trainwell.train.tracking import RunLog

        mlflow_log = MlflowLog(RunLog.for_run_folder(cfg, out_dir, store, warn))
    loop_callbacks = [cb for cb in (*callbacks, *extra_callbacks, doctor, snapshots,
                                    EarlyStopping(cfg.train.early_stopping) if cfg.train.early_stopping else None,
                                    keep_best, metrics_file, csv_file, tensorboard, mlflow_log, progress)
                      if cb is not None]
    with _ending(mlflow_log):  # a killed or failed run's MLflow run is marked so (and resumes)
        if loaded is not None:
            _restore(state, loop_callbacks, loaded, world)
            if world.main:
                _reopen_for_training(out_dir, cfg)  # everything is built: only now does the run become unfinished
            if state.stop_reason == "early_stopping" and state.epoch < cfg.train.epochs:
                state.stop_reason = None  # a finished run extended with train.epochs: train on

        params = count_parameters(classifier)
        where = f"resuming {out_dir} at epoch {state.epoch + 1}, step {state.step}" if loaded is not None \
            else f"run dir {final_path(out_dir)}"
        console.print(
            f"[bold]trainwell[/] {splits.description} | {len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
            f"train/val/test | {cfg.model.name if model is None else type(classifier.net).__name__} "
            f"{params:,} params | {device} | {where}",
            highlight=False,
        )
        try:
            with catch_signals() as stop:
                result = fit(state, splits.train, splits.val, LoopSettings.from_config(cfg, splits.num_classes),
                             augment=augment, callbacks=loop_callbacks, checkpoints=checkpoints, stop=stop, warn=warn,
                             world=world)
        except Interrupted as exc:
            nproc = f" --nproc {world.size}" if world.distributed else ""
            raise Interrupted(exc.signum, exc.epoch, exc.step,
                              f"resume with: trainwell train --resume {out_dir}{nproc}") from None
        finally:
            for cb in (progress, tensorboard, doctor):
                if cb is not None:
                    cb.close()

        if state.ema is not None:  # validation used the averaged weights: so do the test and the saved model
            classifier.load_state_dict(state.ema.module.state_dict())
        fmt = forward_format(cfg.train.precision, cfg.train.channels_last, device)  # tested as validated
        test = evaluate_split(classifier, splits.test, device, cfg.train.eval_batch_size, fmt, world)
        summary = _summary(result, test, cfg, splits, device, params, out_dir, keep_best, fmt.name)
        summary.update(flop_fields(flops))
        summary["processes"] = world.size
        if result.divergence is not None:  # (every rank diagnoses: a synchronised batch norm's forward is collective)
            summary["divergence"] = {**result.divergence, "diagnosis": _diagnosis(classifier, splits, cfg, device)}
        if not world.main:  # the files are rank 0's
            return Run(out_dir, cfg, classifier, summary, list(splits.classes), tuple(splits.input_shape), splits)
        if doctor is not None:
            summary["doctor"] = doctor.summary()
            doctor.write(out_dir)  # doctor.json + doctor_*.png
        save_weights(out_dir / "model.safetensors", classifier.state_dict())
        if result.history and cfg.train.plots:
            plot_curves(result.history, out_dir / "curves.png", title=f"{out_dir.name} (seed {cfg.train.seed})")
        summary.update(_test_metrics(classifier, splits, device, cfg, fmt, out_dir))
        if snapshots is not None:
            summary["snapshot_ensemble"] = snapshots.combine(out_dir, splits, console)
        write_run_report(out_dir, summary, result.param_groups)  # report.html, from the figures just written
        write_json(out_dir / "summary.json", summary)  # last: its presence marks a finished run
        if mlflow_log is not None:  # the summary, the folder as artifacts; the MLflow run ends
            mlflow_log.log.finish(out_dir, summary)
        _report(console, summary, result, cfg, out_dir)
        return Run(out_dir, cfg, classifier, summary, list(splits.classes), tuple(splits.input_shape), splits)


def _test_metrics(classifier: nn.Module, splits: Splits, device: torch.device, cfg: Config, fmt: Any,
                  out_dir: Path) -> dict[str, Any]:
    """summary.json's metrics of the final classifier on the test split (:mod:`trainwell.train.metrics`:
    top-k, NLL, ECE, per-class precision/recall/F1/support, confusion) and, with train.plots, confusion.png
    and reliability.png in the run folder. Rank 0 only, in eval mode (batch norm then needs no collective),
    one forward of the test split; nothing when the logits are not finite (a diverged run's last good
    weights can still overflow)."""
    from trainwell.train.metrics import classification_metrics, summary_fields, write_metric_plots

    with torch.no_grad():
        logits = torch.cat([predict_logits(classifier, xb, device, cfg.train.eval_batch_size, fmt)
                            for xb in splits.test.chunks(cfg.train.eval_batch_size)])
    if not len(logits) or not torch.isfinite(logits).all():
        return {}
    metrics = classification_metrics(logits, splits.test.y)
    if cfg.train.plots:
        write_metric_plots(metrics, list(splits.classes), out_dir, title=f"{out_dir.name}, test split")
    return summary_fields(metrics, "test", list(splits.classes))


def check_distributed(cfg: Config, processes: int) -> None:
    """What a data-parallel run of ``processes`` ranks cannot do (yet), refused before anything is built."""
    check_batch(cfg.train.batch_size, processes)
    refused = {"train.ensemble > 1": cfg.train.ensemble > 1, "train.snapshots": cfg.train.snapshots > 0,
               "doctor=true": cfg.doctor}
    for what, given in refused.items():
        if given:
            raise ConfigError(f"{what} is not supported in a data-parallel run (--nproc {processes}); "
                              "run it in one process (drop --nproc).")


def check_ensemble_keys(cfg: Config, *, custom_model: bool = False, custom_data: bool = False) -> None:
    """train.ensemble and train.snapshots against what ``train`` was given."""
    k = cfg.train.ensemble
    if k > 1 and (custom_model or custom_data):
        raise ConfigError("train.ensemble > 1 trains the members from the config in worker processes, without a "
                          "custom model=, splits= or prepare=; train the members one by one and use build_ensemble.")
    if cfg.train.snapshots and custom_model:
        raise ConfigError("train.snapshots saves loadable run folders, which a custom nn.Module cannot be rebuilt "
                          "from; use a registry model (trainwell list model) or train.snapshots=0.")


def _check_resumable(run_dir: Path, model: nn.Module | None, prepare: Any) -> None:
    card = read_card(run_dir)
    if card.get("custom_model") and model is None:
        raise RunDirError(f"run '{run_dir}' used a custom nn.Module; resume it with the same class: "
                          "trainwell train --resume RUN_DIR --model FILE.py:CLASS, or from Python: "
                          "trainwell.train(resume=RUN_DIR, model=YourModule()).")
    if card.get("hub") and model is None:
        raise RunDirError(f"run '{run_dir}' trained {card.get('model')}, which --resume cannot rebuild yet; train it "
                          "again with --overwrite.")
    if card.get("prepared") and prepare is None:
        raise RunDirError(f"run '{run_dir}' was trained by trainwell finetune, which cannot be resumed yet; run the "
                          "finetune command again with --overwrite.")


def check_new_out(out: Path, overwrite: bool, cfg: Config) -> None:
    """Refuse a non-empty --out (without --overwrite) before any data is loaded or LR range test runs,
    and a data path inside the folder that --overwrite empties."""
    check_out_dir(out, overwrite)
    data = Path(cfg.data.path) if cfg.data.path else None
    if overwrite and data is not None and out.is_dir() and data.exists() and is_inside(data, out):
        raise RunDirError(f"data.path '{data}' lies inside the output folder '{out}', whose contents --overwrite "
                          "removes; move the data or choose another --out.")


def _new_run_dir(out: str | Path | None, overwrite: bool, cfg: Config, card: dict[str, Any], lr_found: Any,
                 say: Callable[[str], None]) -> Path:
    """The new run's folder, emptied by --overwrite (only now: every check has passed), config.yaml
    and model.json written first; summary.json, written last, will mark it finished."""
    out_dir = prepare_out_dir(out, "train", f"{cfg.data.name}-{card['model']}", overwrite, say)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    if lr_found is not None:
        write_json(out_dir / "lr_find.json", lr_found.to_dict())
        plot_lr_find(lr_found, out_dir / "lr_find.png")
    write_json(out_dir / "model.json", card)
    return out_dir


def _reopen_run_dir(run_dir: Path, cfg: Config, warn: Callable[[str], None]) -> tuple[Path, Checkpoints, Any]:
    """The run folder of a resumed run, its checkpoints and the newest good one; a finished run only
    continues with more epochs than it was trained for."""
    checkpoints = Checkpoints(run_dir / CHECKPOINT_DIR, cfg.train.keep_checkpoints)
    loaded = checkpoints.latest(warn)
    if loaded is None:
        raise RunDirError(f"'{run_dir}' has no checkpoint to resume from (killed before its first step?); "
                          "start it again with --overwrite.")
    done, previous = _saved_epoch(loaded), read_config(run_dir).train.epochs
    if (run_dir / "summary.json").is_file():
        if read_summary(run_dir).get("diverged"):
            raise RunDirError(f"run '{run_dir}' stopped after its loss diverged; train it again with a lower optim.lr "
                              "(or train.on_divergence=rollback) instead of resuming it.")
        if cfg.train.epochs <= previous:
            raise RunDirError(f"run '{run_dir}' is finished ({done} epochs); pass train.epochs=N with N > {previous} "
                              "to train it further.")
    if cfg.train.epochs < done:
        raise ConfigError(f"train.epochs={cfg.train.epochs} but run '{run_dir}' has already trained {done} epochs.")
    return run_dir, checkpoints, loaded


def _misfit(loaded: Any, exc: BaseException | str) -> RunDirError:
    reason = exc if isinstance(exc, str) else exception_line(exc, 100)
    return RunDirError(f"checkpoint '{loaded.path}' does not fit the run in its folder ({reason}); the folder mixes "
                       "files of different runs: train it again with --overwrite.")


def _saved_epoch(loaded: Any) -> int:
    """The epochs a checkpoint's loop had finished. Its hashes prove it is the file that was written,
    not that a training loop wrote it: what resuming reads is checked."""
    state = loaded.state
    if not isinstance(state, dict) or not isinstance(state.get("loop"), dict) or \
            not isinstance(state.get("callbacks"), list):
        raise _misfit(loaded, "no training state: 'loop' and 'callbacks' are missing")
    try:
        return int(state["loop"]["epoch"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise _misfit(loaded, exc) from None


def _restore(state: Any, callbacks: Sequence[Callback], loaded: Any, world: World) -> None:
    """The checkpoint's state into the state built from the run's config: a checkpoint copied from
    another run (or made by hand) is one line, not a traceback. Each rank of a data-parallel run takes
    its own generators from it (:func:`trainwell.train.distributed.local_state`)."""
    from trainwell.train.distributed import local_state

    try:
        state.load_state_dict(local_state(world, loaded.state["loop"], f"checkpoint '{loaded.path}'"))
        load_callback_states(callbacks, loaded.state["callbacks"])
    except (ConfigError, RunDirError):
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
        raise _misfit(loaded, exc) from None


def _reopen_for_training(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())  # train.epochs may have grown
    (run_dir / "summary.json").unlink(missing_ok=True)  # unfinished again until this call ends


def _summary(result: Any, test: dict[str, Any], cfg: Config, splits: Splits, device: torch.device, params: int,
             out_dir: Path, keep_best: KeepBest | None, precision: str) -> dict[str, Any]:
    final = result.history[-1] if result.history else {}
    return {
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "final_val_acc": final.get("val_acc", float("nan")),
        "final_train_acc": final.get("train_acc", float("nan")),
        "epochs": len(result.history),
        "steps": result.steps,
        "kept": cfg.train.keep,
        "kept_epoch": keep_best.epoch if keep_best is not None and keep_best.weights is not None
        else len(result.history),
        "stopped": result.stop_reason,
        "params": params,
        "train_seconds": result.train_seconds,
        "examples_per_second": result.examples_seen / result.train_seconds if result.train_seconds else 0.0,
        "diverged": result.diverged,
        "divergence": None,
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "data": splits.description,
        "device": str(device),
        "precision": precision,
        "data_on_device": result.data_on_device,
        "class_weights": result.class_weights,
        "sampler": cfg.data.sampler,
        "seed": cfg.train.seed,
        "param_groups": {k: len(v) for k, v in result.param_groups.items()},
        "lr": cfg.optim.lr,
        "lr_auto": read_lr_auto(out_dir),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def flop_fields(s: ModelSummary) -> dict[str, Any]:
    """summary.json's FLOPs per example (trainwell.nn.summary): None where a layer's products are not
    counted (listed in ``flops_not_counted``), so no partial figure passes for the whole."""
    return {"forward_flops_per_example": s.forward_flops if s.complete else None,
            "train_flops_per_example": s.train_flops if s.complete else None,
            "flops_not_counted": list(s.not_counted)}


def epoch_examples(n_train: int, batch_size: int) -> int:
    """Examples one training epoch visits (the loop drops a trailing batch of 1)."""
    return sum(len(b) for b in BatchOrder(n_train, batch_size).batches(torch.arange(n_train)))


def summarize_config(config: ConfigLike = None) -> tuple[ModelSummary, Splits, int]:
    """The model a config would train, built as ``train`` builds it (on its data, with its fitted
    preprocessing), summarized for the data's input shape; with the splits and one epoch's examples."""
    cfg = as_config(config)
    check_names(cfg)
    splits = load_splits(cfg.data)
    classifier = build_classifier(cfg, splits)
    return summarize(classifier, splits.input_shape), splits, epoch_examples(len(splits.train), cfg.train.batch_size)


def _report(console: Console, summary: dict[str, Any], result: Any, cfg: Config, out_dir: Path) -> None:
    console.print(
        f"test acc {percent(summary['test_acc'])}  test loss {summary['test_loss']:.4f}  "
        f"best val acc {percent(summary['best_val_acc'])}  "
        f"{summary['examples_per_second']:,.0f} ex/s  -> {final_path(out_dir)}",
        highlight=False,
    )
    if result.diverged:
        d = summary["divergence"]
        print_warning(console, f"the loss became non-finite at step {d['step']} (epoch {d['epoch']}); training "
                               f"stopped with the last good weights. {d['diagnosis']}")
    elif result.stop_reason == "early_stopping":
        console.print(f"early stopping: no better val acc for {cfg.train.early_stopping} epochs; stopped after "
                      f"epoch {len(result.history)}", highlight=False)


def read_lr_auto(run_dir: Path) -> bool:
    """Whether the run's LR came from the range test (lr_find.json beside it)."""
    return (Path(run_dir) / "lr_find.json").is_file()


def find_lr(
    config: ConfigLike = None,
    *,
    overrides: list[str] | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    steps: int = 100,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
) -> dict[str, Any]:
    """The LR range test on the configured model and data; writes lr_find.png/json and summary.json."""
    cfg = as_config(config, overrides)
    check_names(cfg)
    device = resolve_device(cfg.train.device)
    staged = staged_out_dir(out, "lr-find", f"{cfg.data.name}-{model_tag(cfg)}", overwrite)  # before the test
    splits = load_splits(cfg.data)
    classifier = build_classifier(cfg, splits)
    seed_global(cfg.train.seed, "lr_find")
    result = lr_range_test(classifier, splits, cfg, device, start_lr=start_lr, end_lr=end_lr, steps=steps)
    summary = {"suggested_lr": result.suggested_lr, "min_loss_lr": result.min_loss_lr,
               "diverged_at": result.diverged_at, "steps": len(result.lrs), "optim": cfg.optim.name}
    with staged as out_dir:
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
        write_json(out_dir / "lr_find.json", result.to_dict())
        plot_lr_find(result, out_dir / "lr_find.png")
        write_json(out_dir / "summary.json", summary)
    return {**summary, "out": str(staged.path)}


def param_group_rows(cfg: Config) -> list[dict[str, Any]]:
    """Which tensors get weight decay and the L1/L2 penalties, for ``trainwell train --show-param-groups``."""
    from trainwell.train.optim import split_param_groups

    check_names(cfg)
    splits = load_splits(cfg.data)
    groups = split_param_groups(build_classifier(cfg, splits).net, cfg.reg.exempt_bias_and_norm)
    rows = []
    for group, params in (("decay", groups.decay), ("no_decay", groups.no_decay)):
        on = group == "decay"
        for name, p in params:
            rows.append({
                "name": name, "shape": list(p.shape), "numel": p.numel(), "group": group,
                "weight_decay": cfg.optim.weight_decay if on else 0.0,
                "l1": cfg.reg.l1 if on else 0.0, "l2": cfg.reg.l2 if on else 0.0,
            })
    return rows
