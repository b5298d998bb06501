"""Every threshold the doctor uses, named, with where it comes from.

The rules in :mod:`trainwell.diagnose.rules` compare measured statistics against these constants
only. Where the literature gives a figure, the comment cites it; where it gives a principle but no
number, the comment says how the number was chosen (and docs/doctor.md reports how the whole set
performs on planted faults and healthy nets: ``python -m trainwell.docs doctor``).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- sampling

#: Default: record statistics on one training step in this many (the first step is always sampled,
#: so problems at initialisation show up in epoch 1). Non-sampled steps cost one Python call.
SAMPLE_EVERY = 50

#: Histogram bins (odd, so that 0 is the centre of a bin and a collapsed layer is one spike).
HIST_BINS = 41
#: Histogram range of unbounded outputs: [-HIST_LIMIT, HIST_LIMIT], in the units of a
#: standardised input (4 standard deviations of a unit Gaussian hold all but 6e-5 of its mass).
#: Values outside land in the end bins, so a layer whose activations explode shows as two spikes at
#: the edges. Bounded activations (sigmoid, tanh) use their own range.
HIST_LIMIT = 4.0
#: Values per layer and sampled batch that go into the histogram (a strided sample): enough for
#: 41 bins (~200 values per bin), and bounded, so a sampled step's cost does not grow with the maps.
HIST_SAMPLE = 8192

# ----------------------------------------------------------------------------- saturation

#: A bounded unit is saturated when its output lies within this fraction of the output range of a
#: bound: |tanh| > 0.95, sigmoid < 0.025 or > 0.975. At that point the derivative is below 10% of
#: its peak (tanh' = 1 - y^2 = 0.0975; sigmoid' = y (1 - y) = 0.024 of a peak of 0.25), so the unit
#: passes back less than a tenth of the gradient it passes at 0 (LeCun et al. 1998, Efficient
#: BackProp, sec. 4.4; Glorot & Bengio 2010, Understanding the difficulty of training deep
#: feedforward neural networks, sec. 3 on saturated sigmoid units).
SATURATION_EPS = 0.025
#: Fraction of saturated outputs of a layer that warrants a warning / an error. Glorot & Bengio 2010
#: (Fig. 2) show the top sigmoid layer of a 5-layer net saturating almost entirely (~100% of units
#: at 0) under standard init; a healthy tanh layer with Xavier init has ~5% of |tanh| > 0.95.
SATURATED_WARN = 0.25
SATURATED_ERROR = 0.6

# ----------------------------------------------------------------------------- dead units

#: Fraction of ReLU units that output 0 for every sampled example. CS231n (Karpathy, "Neural
#: Networks Part 1", on ReLU's cons) warns that "as much as 40% of your network can be dead" after
#: a too-high learning rate; we warn at half of that and call it an error past half the layer.
DEAD_WARN = 0.2
DEAD_ERROR = 0.5
#: Examples needed before a unit that never fired counts as dead: a unit firing on 10% of inputs is
#: silent on 32 random examples with probability 0.9^32 = 3%.
DEAD_MIN_EXAMPLES = 32

# ----------------------------------------------------------------------------- signal scale

#: Std of a hidden layer's pre-activations relative to the std of the network's input. Good
#: initialisation keeps the forward variance constant through depth (Glorot & Bengio 2010; He et
#: al. 2015, Delving deep into rectifiers, eq. 10), so the ratio stays O(1). The CS231n lecture
#: figure of N(0, 0.01) weights shows it collapsing by ~10x per layer. Warn at a 10x loss, error at
#: 1000x (the signal is then of the order of float32 rounding of the biases).
ACT_VANISH_WARN = 0.1
ACT_VANISH_ERROR = 1e-3
#: The same ratio growing: 10x warns (a layer's output is an order of magnitude larger than its
#: input), 1000x is an error (softmax/loss saturate and overflow is near).
ACT_EXPLODE_WARN = 10.0
ACT_EXPLODE_ERROR = 1e3

# ----------------------------------------------------------------------------- gradient scale

#: Std of the back-propagated gradient dL/dz at the first hidden layer divided by that at the last
#: hidden layer (z = pre-activation). The backward analogue of the forward rule (Glorot & Bengio
#: 2010, eq. 13 and Fig. 7; He et al. 2015, eq. 14): with good init it stays O(1) through depth.
#: Below 1e-2 the first layer learns 100x slower than the last (Bengio et al. 1994; Hochreiter 1991).
GRAD_VANISH_WARN = 1e-2
GRAD_VANISH_ERROR = 1e-4
#: Above 1e2 gradients grow 100x towards the input (Pascanu et al. 2013, On the difficulty of
#: training recurrent neural networks, sec. 2: exploding gradients).
GRAD_EXPLODE_WARN = 1e2
GRAD_EXPLODE_ERROR = 1e4

# ----------------------------------------------------------------------------- update ratio

#: ||dW|| / ||W|| per step, median over the weight layers. The rule of thumb is ~1e-3 (Karpathy,
#: CS231n "Neural Networks Part 3", ratio of updates to weights: "a rough heuristic is that this
#: ratio should be somewhere around 1e-3. If it is lower than this then the learning rate might be
#: too low. If it is higher then the learning rate is likely too high"). Measured on digits with a
#: DoctorCallback (mlp and cnn, 4 epochs, every 5 steps): healthy runs' first epoch has a median of
#: 0.007-0.026 (SGD momentum 0.9 at 0.05, Adam at 1e-3; the head alone reaches 0.07), runs that end
#: badly (lr 4-20x the default: 56% accuracy or worse) 0.076-0.65.
#: So the warning sits 50x above the rule and the error 500x above (half the weights replaced per step).
UPDATE_RATIO_TARGET = 1e-3
UPDATE_RATIO_HIGH = 5e-2
UPDATE_RATIO_HIGH_ERROR = 5e-1
#: 10x below the rule ("lower than this, the learning rate might be too low"). Not applied once the
#: schedule has decayed the lr below LR_DECAYED of its peak: small steps are then intended.
UPDATE_RATIO_LOW = 1e-4
LR_DECAYED = 0.5

# ----------------------------------------------------------------------------- doctor --fix

#: The median update ratio a corrected optim.lr aims at: UPDATE_RATIO_HIGH / FIX_LR_MARGIN = 0.0125,
#: inside the healthy first-epoch range above (0.007-0.026). The ratio scales linearly with the lr
#: (SGD's step is lr * g, Adam's ~lr per weight), so the new lr is lr * FIX_UPDATE_RATIO / measured.
#: The margin of 4 below the warning: on digits (mlp, no norm, 5 epochs, 3 seeds) the initial estimate
#: 0.029 (lr 0.2) trains to 97.5% test accuracy, 0.043 (lr 0.3) to 93.2%, 0.072 (lr 0.5) to 16%:
#: the edge of the band is already a worse run, and the estimate is only good to ~2x.
FIX_LR_MARGIN = 4.0
FIX_UPDATE_RATIO = UPDATE_RATIO_HIGH / FIX_LR_MARGIN
#: Where no update ratio was measured to scale from (a loss history that rises or diverges), the lr
#: moves by this factor (the lecture's "try 10x"); the next round's check measures the result.
FIX_LR_STEP = 10.0
#: doctor --fix stops after this many rounds of fix -> diagnose when findings remain.
FIX_MAX_ROUNDS = 5

# ----------------------------------------------------------------------------- input

#: Inputs should have mean ~0 and comparable, ~unit variances (LeCun et al. 1998, Efficient
#: BackProp, sec. 4.3 "Normalizing the inputs"). A feature whose mean is more than this many units
#: from 0, or whose std is outside [INPUT_STD_MIN, INPUT_STD_MAX], is not normalised (raw 0..255
#: pixels: mean ~80, std ~90).
INPUT_MEAN_MAX = 3.0
INPUT_STD_MAX = 10.0
INPUT_STD_MIN = 0.05
#: Info only: the overall mean is more than this many stds from 0 (e.g. [0, 1] pixels, mean 0.3,
#: std 0.4): a shift that makes early updates zig-zag (LeCun et al. 1998, sec. 4.3).
INPUT_CENTRED_MAX = 0.5

# ----------------------------------------------------------------------------- history

#: Overfitting: Prechelt 1998 ("Early stopping - but when?") generalisation loss
#: GL(t) = E_val(t) / min_{t' <= t} E_val(t') - 1; his GL_alpha criteria stop at alpha = 1..5%.
#: His 1-5% are stopping points; a warning needs firmer evidence, since the val loss of a small val
#: split is noisy (digits' 144 val examples moved it 6% in 2 epochs of a healthy run). We report once
#: GL > 10% and val loss has risen for OVERFIT_PATIENCE epochs while train loss fell.
OVERFIT_GL = 0.10
OVERFIT_PATIENCE = 3
#: Learning rate too high: the train loss of an epoch exceeds the first epoch's by this fraction
#: (early rise), or it rises in at least LOSS_OSCILLATION of the epoch-to-epoch steps (>= 4 epochs),
#: or an epoch's mean train loss exceeds LOSS_CHANCE times ln(K), the loss of guessing uniformly
#: among K classes (Karpathy, "A Recipe for Training Neural Networks": verify loss @ init = ln K):
#: after a whole epoch, worse than guessing means the steps overshoot.
LOSS_RISE_TOL = 0.02
LOSS_CHANCE = 1.5
LOSS_OSCILLATION = 0.4
#: Learning rate too low: tiny updates and the train loss fell by less than this fraction overall.
LOSS_FLAT_REL = 0.05
