"""Kinds of layer, by type: the weight layers and the norm layers that init, the optimiser, fine-tuning
and the doctor each recognise, defined once so they agree.

``isinstance(module, WEIGHT_LAYERS)`` is true of Linear and every Conv (1/2/3-d, transposed
included); ``isinstance(module, NORM_LAYERS)`` of every batch, instance, group, layer and local
response norm. What each user does with a norm layer:

* init (:func:`trainwell.nn.init.init_model`): scale 1, shift 0, where the layer has them;
* the optimiser (:func:`trainwell.train.optim.split_param_groups`): its parameters are never decayed;
* layer groups (:mod:`trainwell.nn.layer_groups`): it joins the group of the layer it normalises;
* the doctor (:mod:`trainwell.diagnose.recorder`): a weight layer feeding one counts as normalised.

LocalResponseNorm has no parameters, so only the doctor sees it (it rescales its input by the local
energy of neighbouring channels, as AlexNet used it).
"""

from __future__ import annotations

from torch import nn

#: Layers with a weight that init schemes set and the doctor tracks: Linear and Conv1d/2d/3d (transposed too).
WEIGHT_LAYERS: tuple[type[nn.Linear], type[nn.modules.conv._ConvNd]] = (nn.Linear, nn.modules.conv._ConvNd)
#: Normalisation layers: BatchNorm*/InstanceNorm* (``_NormBase``), GroupNorm, LayerNorm, LocalResponseNorm.
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                                            nn.LocalResponseNorm)

__all__ = ["NORM_LAYERS", "WEIGHT_LAYERS"]
