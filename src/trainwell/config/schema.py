"""The config's schema: the typed sections (DataConfig ... Config), each key's documentation, the key table.

The dotted key names (``optim.lr``, ``model.width`` ...) are the public contract; each field's
docstring (the string after it) is its documentation in ``trainwell train --print-keys`` and
docs/reference.md. Turning text, YAML and overrides into these types is :mod:`trainwell.config.resolution`;
the syntax of list and ``name:args`` values is :mod:`trainwell.config.values`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from trainwell.config.values import Spec
from trainwell.errors import ConfigError

@dataclass
class DataConfig:
    name: str = "digits"
    """Data source (``trainwell list data``)."""
    path: str | None = None
    """File or folder for file-based sources (idx, cifar, folder, npz, csv)."""
    val_fraction: float = 0.1
    """Fraction of the training split held out for validation."""
    test_fraction: float = 0.2
    """Fraction held out for test when the source has no test split of its own."""
    split_seed: int = 0
    """Seed of the train/val/test split; fixed apart from train.seed so runs over seeds share a test set."""
    preprocess: str = "standardize"
    """Preprocessing fitted on the training split (``trainwell list preprocess``)."""
    pca_components: float = 0.99
    """pca/pca_whiten: int >= 1 = that many components; a fraction in (0, 1) = enough components to keep that fraction of the variance."""
    whiten_eps: float = 1e-2
    """pca_whiten/zca: eps added to each eigenvalue, relative to the mean eigenvalue (scale-free); 1e-2 keeps pixel noise from being amplified, 0 = exact."""
    limit: int = 0
    """Keep at most this many training examples (0 = all); for quick experiments and small-data regimes."""
    classes: list[int] = field(default_factory=list)
    """Keep only these original class indices, e.g. [5,6,7,8,9], in train, val and test, relabelled 0..k-1 in the order given (class names kept); empty = all. Splits are drawn first, so an example stays in the same split whatever the selection."""
    per_class: int = 0
    """Keep at most this many training examples per class (0 = all), drawn with data.split_seed (not train.seed): every seed and fine-tune strategy sees the same few labels; a larger per_class adds to the smaller one's picks."""
    label_column: str = "label"
    """csv: the label column's name, or its 0-based index."""
    image_size: list[int] = field(default_factory=list)
    """folder/predict: resize images to [H, W] (empty = size of the first image)."""
    grayscale: bool = False
    """folder: convert images to one channel."""
    cifar_labels: str = "fine"
    """cifar (CIFAR-100 only): 'fine' (100 classes) or 'coarse' (20 superclasses)."""
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    """The training order of each epoch: shuffle = a permutation of the training split; balanced = len(train) examples drawn with replacement, every class equally likely and every example uniformly within its class (as torch's WeightedRandomSampler with weights 1/n_c), for imbalanced classes. Both from the shuffle stream of train.seed."""


@dataclass
class ModelConfig:
    name: str = "auto"
    """Architecture (``trainwell list model``); auto = the data's kind decides, once the data is read, and the run's config.yaml records the choice: cnn for images and signals (digits, 8 seeds: 98.9% with batch norm, mlp 98.2%), mlp for tabular rows (a CSV)."""
    depth: int = 2
    """mlp: hidden layers; resnet: residual blocks per stage."""
    width: int = 256
    """mlp: units per hidden layer; resnet: channels of the first stage."""
    channels: list[int] = field(default_factory=lambda: [32, 64])
    """cnn: output channels of each conv block."""
    kernel_size: int = 3
    """cnn: convolution kernel size."""
    convs: int = 1
    """cnn: convolutions (each with its norm and activation) per entry of model.channels; each block ends in one max-pool, as VGG's stages (Simonyan & Zisserman 2015)."""
    stem_stride: int = 1
    """cnn: stride of the first convolution: 1, or 2 = early down-sampling (that block halves each axis by its stride instead of its max-pool; a quarter of the positions in the largest feature map)."""
    activation: Spec = Spec("relu")
    """Nonlinearity after each hidden layer of mlp/cnn/resnet (``trainwell list activation``), with arguments as name:value, e.g. leaky_relu:0.2 (docs/values.md); rnn/gru/lstm keep their cell's own (tanh, and sigmoid gates)."""
    norm: str = "batch"
    """Normalisation after each hidden linear/conv layer of mlp/cnn/resnet: none, batch, layer, group (batch: no dead filters at lr 0.05); rnn/gru/lstm use none."""
    dropout: float = 0.0
    """Dropout probability: after every hidden layer (mlp), before the final linear layer (cnn, resnet), between stacked layers and before the head (rnn/gru/lstm)."""
    head: str = "avg"
    """cnn: 'avg' global-average-pools the last feature map (shift-invariant); 'flatten' keeps positions."""
    hidden: int = 128
    """rnn/gru/lstm: hidden units per layer and direction (torch's hidden_size); the head sees 2x this when bidirectional."""
    layers: int = 1
    """rnn/gru/lstm: stacked recurrent layers (>= 1); model.dropout applies between them and before the head."""
    bidirectional: bool = False
    """rnn/gru/lstm: also read the sequence backwards (Schuster & Paliwal 1997) and concatenate both directions' states."""
    readout: str = "last"
    """rnn/gru/lstm: what the head sees: 'last' = the top layer's final state (both directions' when bidirectional), 'mean' = its output averaged over time steps."""
    layout: str = "channels_first"
    """rnn/gru/lstm: how an example of shape (A, B) is read: channels_first = (C, T), C features per step and T steps on the last axis (how trainwell gives signals, e.g. MNIST-1D's (1, 40), and how the cnn reads them); channels_last = (T, F). A 1-D example (T,) is T steps of one feature."""


@dataclass
class InitConfig:
    scheme: str = "kaiming_normal"
    """Weight initialisation (``trainwell list init``); 'default' keeps PyTorch's."""
    std: float = 0.01
    """Standard deviation for scheme=normal and scheme=uniform (U(+-sqrt(3) std), the same variance)."""
    mode: str = "fan_in"
    """kaiming: fan_in preserves forward variance, fan_out backward variance."""
    gain: float | Literal["default", "auto"] = "default"
    """Gain g of xavier_*, kaiming_* and orthogonal (the others ignore it): 'default' = each scheme's own, as in its paper and torch.nn.init (xavier, orthogonal: 1; kaiming: the gain of the activation after the layer, sqrt(2) for relu); 'auto' = the activation's gain (torch.nn.init.calculate_gain) for all three, so xavier on square layers equals kaiming; a number > 0 = that gain for all three (e.g. 1.0: the gain-1 formulas everywhere, kaiming then being LeCun's 1/sqrt(fan_in)). Linear/Conv layers only: the gate blocks of rnn/gru/lstm keep gain 1 (init.recurrent)."""
    bias: float = 0.0
    """Constant for the biases of hidden layers (0 = zeros); the output layer's bias stays 0."""
    recurrent: str = "orthogonal"
    """rnn/gru/lstm: scheme for each hidden-to-hidden gate matrix (H x H), with no activation gain (``trainwell list init``); orthogonal keeps the norm of a state through the recurrence (Saxe et al. 2014); 'default' keeps PyTorch's U(+-1/sqrt(H)). Applies under init.scheme=default too; the input-to-hidden blocks follow init.scheme."""
    forget_bias: float = 1.0
    """lstm: the forget gate's bias, where the other gates get init.bias (1: Jozefowicz et al. 2015, as Keras' unit_forget_bias: the cell keeps its memory from the start); init.scheme=default keeps PyTorch's biases instead."""
    lsuv_tol: float = 0.1
    """lsuv: rescale each layer until |Var(its output on the batch) - 1| < lsuv_tol."""
    lsuv_max_iter: int = 10
    """lsuv: at most this many rescalings per layer."""
    lsuv_head: bool = False
    """lsuv: also rescale the last layer (the logits) to unit variance, as the paper does; off = it keeps its orthonormal init."""

    def __post_init__(self) -> None:
        if self.gain not in ("default", "auto") and not (
            isinstance(self.gain, (int, float)) and not isinstance(self.gain, bool)
            and math.isfinite(self.gain) and self.gain > 0
        ):
            raise ConfigError(f"init.gain must be a number > 0, 'default' or 'auto', got {self.gain!r}; "
                              "e.g. init.gain=auto (the activation's gain).")


@dataclass
class RegConfig:
    l1: float = 0.0
    """L1 penalty coefficient: loss += l1 * sum|w| (weights only)."""
    l2: float = 0.0
    """L2 penalty coefficient: loss += l2/2 * sum w^2 (weights only)."""
    exempt_bias_and_norm: bool = True
    """Keep biases and norm scales/shifts out of weight decay and L1/L2 (false: every parameter)."""

    def __post_init__(self) -> None:
        if self.l1 < 0 or self.l2 < 0:
            raise ConfigError("reg.l1 and reg.l2 must be >= 0.")


@dataclass
class OptimConfig:
    name: str = "sgd"
    """Optimiser (``trainwell list optim``)."""
    lr: float | Literal["auto"] = 0.05
    """Peak learning rate; 'auto' runs the LR range test first and uses its suggestion."""
    momentum: float = 0.9
    """sgd: momentum (sched.momentum, when set, replaces it at every step)."""
    nesterov: bool = True
    """sgd: Nesterov momentum."""
    weight_decay: float = 5e-4
    """Decoupled (adamw) or coupled (sgd, adam) weight decay on weights, never biases or norms."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """adam/adamw: moment decay rates."""
    eps: float = 1e-8
    """adam/adamw: denominator epsilon."""

    def __post_init__(self) -> None:
        if self.lr != "auto" and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr must be a positive number (or auto), got {self.lr}.")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}; e.g. optim.betas=0.9,0.999.")
        if not self.eps > 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}.")


@dataclass
class SchedConfig:
    name: str = "cosine"
    """Learning-rate schedule (``trainwell list sched``)."""
    warmup_epochs: float = 0.0
    """Linear warmup from ~0 to optim.lr over this many epochs."""
    step_epochs: int = 10
    """step: decay every this many epochs."""
    gamma: float = 0.1
    """step: decay factor."""
    min_lr: float = 0.0
    """cosine: final learning rate; cosine_restarts: the learning rate at the end of each cycle."""
    cycles: int = 0
    """cosine_restarts: number of equal cycles, the lr restarting at optim.lr at each (0 = train.snapshots)."""
    momentum: list[float] = field(default_factory=list)
    """Cyclical momentum [min, max], e.g. 0.85,0.95 (Smith 2018; with onecycle Smith & Topin 2019's 0.95 -> 0.85 -> 0.95); empty = off. Any schedule: at every step the momentum (sgd's, in place of optim.momentum; adam/adamw's beta1, in place of optim.betas[0], beta2 kept) moves against the learning rate, m = max - (max - min) * (mult - mult_lo) / (mult_hi - mult_lo), mult being the step's lr multiplier (warmup included) and mult_lo, mult_hi its smallest and largest over the run: min at the lr's peak, max at its lowest; a flat lr (constant without warmup) keeps max (Smith 2018: a constant lr goes with a large constant momentum). A divergence rollback scales only the lr."""

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError(f"sched.warmup_epochs must be >= 0, got {self.warmup_epochs}.")
        if self.cycles < 0:
            raise ConfigError(f"sched.cycles must be >= 0 (0 = train.snapshots), got {self.cycles}.")
        if self.step_epochs < 1:
            raise ConfigError(f"sched.step_epochs must be >= 1, got {self.step_epochs}.")
        if not self.gamma > 0 or self.min_lr < 0:
            raise ConfigError(f"sched.gamma must be > 0 and sched.min_lr >= 0, got {self.gamma} and {self.min_lr}.")
        if self.momentum:
            if len(self.momentum) != 2:
                raise ConfigError(f"sched.momentum must be two numbers [min, max] (or empty = off), got "
                                  f"{self.momentum}; e.g. sched.momentum=0.85,0.95.")
            low, high = self.momentum
            if not (0 <= low < 1 and 0 <= high < 1):
                raise ConfigError(f"sched.momentum values must be in [0, 1), got {self.momentum}; "
                                  "e.g. sched.momentum=0.85,0.95.")
            if low > high:
                raise ConfigError(f"sched.momentum is [min, max] but min {low:g} > max {high:g}; "
                                  f"swap them: sched.momentum={high:g},{low:g}.")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    seed: int = 0
    """Fixes every random draw (init, shuffling, augmentation, dropout); CPU runs repeat bit for bit."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda[:N]."""
    data_on_device: bool | Literal["auto"] = "auto"
    """Where the training split lives while training: true = copied to the device once (a batch is one index operation there: fastest while it fits); false = kept on the host (in RAM, or streamed from a memory-mapped file: data.name=npz stored members, raw idx files, splits over 1 GiB), each batch gathered there and moved by one asynchronous copy (uint8 converted on the device); auto = true when it fits: on CUDA in half the free GPU memory, on the CPU unless the split is streamed from a memory-mapped file. A CPU run gives the same weights bit for bit either way; summary.json's data_on_device says which was used."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off)."""
    eval_batch_size: int = 1024
    progress: bool = True
    """Show a progress bar."""
    plots: bool = True
    """Draw curves.png, confusion.png and reliability.png in the run folder (compare turns it off: it draws the curves of all runs itself); the numbers are in summary.json and report.html either way."""
    tensorboard: bool = False
    """Also write TensorBoard events to RUN_DIR/tensorboard (needs the 'tensorboard' extra)."""
    log: list[Literal["csv", "mlflow"]] = field(default_factory=list)
    """Metrics logs besides RUN_DIR/metrics.jsonl (always written), a list, e.g. train.log=csv,mlflow: csv = RUN_DIR/metrics.csv, one row per epoch (rewritten on a resume or a rollback, as metrics.jsonl, so it matches the weights); mlflow = an MLflow run (needs the 'mlflow' extra) in train.mlflow_uri, experiment train.mlflow_experiment: the resolved config as params (dotted keys), every metric of every epoch (step = epoch), summary.json's numbers, and the run folder (not checkpoints/) as artifacts; a resumed run continues its MLflow run (RUN_DIR/mlflow.json). A compare (a lab, an ensemble) logs each finished run as a child of one parent run, from the run's folder."""
    mlflow_uri: str | None = None
    """train.log=mlflow: the tracking store, e.g. http://HOST:5000 (a tracking server) or sqlite:///PATH.db; unset = MLflow's own default, what 'mlflow ui' started in the same folder reads: $MLFLOW_TRACKING_URI when set, else ./mlflow.db (MLflow >= 3.7; ./mlruns before)."""
    mlflow_experiment: str = "trainwell"
    """train.log=mlflow: the MLflow experiment the runs go to (created if missing)."""
    ensemble: int = 1
    """Train this many members (seeds train.seed, train.seed+1, ...) in parallel and write them as one ensemble (``trainwell ensemble``); 1 = a single model."""
    snapshots: int = 0
    """Snapshot ensemble (Huang et al. 2017): with sched.name=cosine_restarts, save the weights at the end of each of this many cycles and combine them into RUN_DIR/snapshot-ensemble; 0 = off."""
    checkpoint_every: int = 0
    """Also checkpoint every this many optimiser steps (0 = at epoch ends only); checkpoints are always written at every epoch end and on SIGINT/SIGTERM (docs/reliability.md)."""
    keep_checkpoints: int = 2
    """Keep the newest this many checkpoints in RUN_DIR/checkpoints (>= 1; an older one is the fallback when the newest is corrupt)."""
    on_divergence: Literal["stop", "rollback"] = "stop"
    """A non-finite loss: stop (keep the last good checkpoint's weights, exit code 1) or rollback (restart from it with the LR x train.rollback_lr_factor)."""
    rollback_lr_factor: float = 0.5
    """on_divergence=rollback: multiply every learning rate by this at each rollback, in (0, 1)."""
    max_rollbacks: int = 3
    """on_divergence=rollback: at most this many rollbacks; diverging once more stops the run."""
    early_stopping: int = 0
    """Stop after this many epochs without a higher val_acc (0 = off); needs a validation split."""
    keep: Literal["last", "best"] = "last"
    """Which weights are saved and tested: those after the last epoch, or those of the epoch with the best val_acc."""
    ema: float = 0.0
    """Exponential moving average of the weights with this decay, e.g. 0.999 (0 = off): validation, test and the saved model use the averaged weights (batch-norm statistics copied from the live model)."""
    accumulate: int = 1
    """Gradient accumulation: one optimiser step per this many batches of train.batch_size (effective batch = batch_size x accumulate); every step count means optimiser steps."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision (Micikevicius et al. 2018): the forward and the loss of training and evaluation run under torch.autocast in bf16 or fp16 (weights, gradients and optimiser stay fp32); fp16 also scales the loss (torch.amp.GradScaler: a step whose gradients overflow is skipped and the scale halved, not a divergence; it reads one overflow flag per step). auto = bf16 on a CUDA GPU that supports it, fp16 on an older one, fp32 on the CPU and MPS: a CPU without AMX/AVX-512-BF16 emulates bf16 matrix products, slower than fp32 (measured in bench/bench_levers.py). A precision the device cannot autocast to is refused before training."""
    channels_last: bool = False
    """Lay 4-D image batches and the conv weights out channels_last (N,H,W,C) in memory, the layout GPU tensor cores and oneDNN prefer; values are unchanged. A no-op for other input ranks (tabular, 1-D signals, sequences). Measured in bench/bench_levers.py."""
    sync_bn: bool = False
    """Data-parallel runs (--nproc N, torchrun): normalise batch-norm layers over the global batch instead of each process's part (synchronised batch norm: torch.nn.SyncBatchNorm on CUDA, trainwell's all-reduce version on the CPU); it costs two small all-reduces per batch-norm layer and step. No effect in one process."""
    dist_timeout: float = 300.0
    """Data-parallel runs: seconds a process waits for the others at a collective (a rank that died or never started) before the run ends with an error instead of hanging."""
    compile: bool = False
    """torch.compile the forward of training and evaluation (the saved model and checkpoints keep the original module's layout); the first epoch pays the compilation. Off by default everywhere; whether it pays on a CPU is measured in bench/bench_levers.py. On the CPU it needs a C++ compiler."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "keep_checkpoints", "accumulate", "ensemble"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}.")
        for key in ("grad_clip", "checkpoint_every", "max_rollbacks", "early_stopping", "snapshots"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0 (0 = off), got {getattr(self, key)}.")
        if not self.dist_timeout > 0:
            raise ConfigError(f"train.dist_timeout must be > 0 seconds, got {self.dist_timeout}.")
        if not 0 < self.rollback_lr_factor < 1:
            raise ConfigError(f"train.rollback_lr_factor must be in (0, 1), got {self.rollback_lr_factor}.")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema must be in [0, 1) (0 = off; e.g. 0.999), got {self.ema}.")
        if len(set(self.log)) != len(self.log):
            raise ConfigError(f"train.log names a log twice ({','.join(self.log)}); list each once, e.g. train.log=csv,mlflow.")
        if not self.mlflow_experiment.strip():
            raise ConfigError("train.mlflow_experiment must be a name, e.g. train.mlflow_experiment=trainwell.")
        if not (isinstance(self.data_on_device, bool) or self.data_on_device == "auto"):
            raise ConfigError(f"train.data_on_device must be auto, true or false; got {self.data_on_device!r}.")


@dataclass
class MixConfig:
    mixup_alpha: float = 0.0
    """Mixup: lambda ~ Beta(alpha, alpha) (Zhang et al. 2018); 0 = off."""
    cutmix_alpha: float = 0.0
    """CutMix: lambda ~ Beta(alpha, alpha) (Yun et al. 2019); 0 = off."""
    prob: float = 1.0
    """Probability that a batch is mixed."""
    switch_prob: float = 0.5
    """When both are on: probability of cutmix rather than mixup."""

    def __post_init__(self) -> None:
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ConfigError(f"mix.{key} must be >= 0 (0 = off), got {getattr(self, key)}.")
        for key in ("prob", "switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"mix.{key} must be in [0, 1], got {getattr(self, key)}.")


@dataclass
class LossConfig:
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (Szegedy et al. 2016)."""
    class_weights: list[float] | Literal["none", "balanced"] = "none"
    """Multiply each training example's cross-entropy by its class's weight (class imbalance): balanced = n/(K·n_c) from the training split's counts (scikit-learn's class_weight='balanced': the weights average 1 over the examples), or one weight per class, e.g. [1,5]; none = all 1. The loss is the batch's mean of w·CE (as Keras's class_weight; PyTorch's weight= would divide by the batch's weight sum); train_loss is that weighted loss, val/test loss unweighted; summary.json records the weights."""

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if isinstance(self.class_weights, list) and not all(math.isfinite(w) and w >= 0 for w in self.class_weights):
            raise ConfigError(f"loss.class_weights must be finite numbers >= 0, got {self.class_weights}; "
                              "e.g. loss.class_weights=[1,5] or loss.class_weights=balanced.")


@dataclass
class FinetuneConfig:
    source: str | None = None
    """A pretrained run folder (or a trainwell .safetensors, torchvision:NAME, timm:NAME) that a train run fine-tunes from, as trainwell finetune SOURCE does but with this config as given (model.* must be the source's architecture); {seed} in it is replaced by train.seed, so each seed of a compare fine-tunes the pretrained run of its own seed. Unset: train from scratch."""
    strategy: str = "discriminative"
    """trainwell finetune: full (every layer trains), linear_probe (only the new head), gradual (ULMFiT: head first, one more layer group from the top every finetune.unfreeze_every epochs), discriminative (all train, group g from the top at optim.lr * finetune.lr_decay**g; the default: the only strategy that gained at 10 labels/class in every measured setting and never diverged, docs/after-training.md)."""
    bn: str = "frozen"
    """trainwell finetune: frozen = every pretrained batch-norm layer keeps its running mean/var (held in eval mode; its scale/shift still train with its group); train = statistics update. Pitfall: requires_grad=False on BN weights does NOT stop running_mean/var from changing in train mode."""
    unfreeze_every: int = 1
    """trainwell finetune, strategy gradual: epochs between unfreezing one more layer group (head alone for the first ones)."""
    lr_decay: float = 0.3846
    """trainwell finetune, strategy discriminative: lr of layer group g from the top (head g=0) = optim.lr * lr_decay**g; ULMFiT's 1/2.6, in (0, 1]."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: list[Spec] = field(default_factory=list)
    """Augmentation ops in order (``trainwell list augment``): names (defaults) or name:arg=value, e.g. translation,rotation:degrees=10 (docs/values.md)."""
    mix: MixConfig = field(default_factory=MixConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    doctor: bool = False
    """Diagnose the model while it trains (trainwell doctor's checks, one step in 50): findings in summary.json and doctor.json."""
    preset: str | None = None
    """The preset the config started from (recorded, not applied twice)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain sections, lists and scalars (specs as their normal text): what config.yaml holds."""
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Renamed keys keep working: old dotted name -> new dotted name.
ALIASES: dict[str, str] = {
    "optim.wd": "optim.weight_decay",
    "train.lr": "optim.lr",
}



def _plain(value: Any) -> Any:
    """A config (or part of one) as plain YAML data: sections -> dicts, specs -> their normal text."""
    if isinstance(value, Spec):
        return str(value)
    if is_section(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def is_section(hint: Any) -> bool:
    """Whether a field's type is a section of keys (DataConfig ...), not a value such as a Spec."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint) and hint is not Spec


# ----------------------------------------------------------------------------- key table


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass, by field name."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # pragma: no cover - source unavailable (frozen app)
        return docs
    body = tree.body[0].body  # type: ignore[attr-defined]  # the source of a class is one ClassDef
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[stmt.target.id] = str(nxt.value.value).strip()
    return docs


def _leaf_types(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of the config with its type annotation."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = prefix + f.name
        if is_section(hint):
            out.update(_leaf_types(hint, key + "."))
        else:
            out[key] = hint
    return out


LEAF_TYPES: dict[str, Any] = _leaf_types()
SECTIONS = {k.split(".")[0] for k in LEAF_TYPES if "." in k}


def key_table() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every config key, in declaration order (for docs and --help)."""
    defaults = flatten(Config().to_dict())
    rows = []
    for cls, prefix in [(Config, "")] + [
        (typing.get_type_hints(Config)[s], s + ".") for s in [f.name for f in dataclasses.fields(Config)]
        if is_section(typing.get_type_hints(Config)[s])
    ]:
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if is_section(hints[f.name]):
                continue
            key = prefix + f.name
            rows.append((key, type_name(hints[f.name]), defaults[key], docs.get(f.name, "")))
    return rows


def type_name(hint: Any) -> str:
    """A field type as the key table shows it: ``int``, ``list[Spec]``, ``float | Literal['auto']``."""
    if not typing.get_args(hint):
        return getattr(hint, "__name__", str(hint))
    return str(hint).replace("typing.", "").replace(f"{Spec.__module__}.", "")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists and non-section dicts stay leaves)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = prefix + str(k)
        if isinstance(v, dict) and key in SECTIONS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

