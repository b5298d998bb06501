"""Lab activations: the verdict rule and the gradient measurement."""

import pytest
import torch
from torch import nn

from trainwell.experiments.labs.activations import decide
from trainwell.experiments.labs.common import rms_gradients


def test_decide_holds_only_with_both_parts_of_the_claim():
    held, text = decide(True, 0.001, grad_ratio_sigmoid=1e-4, grad_ratio_relu=0.2)
    assert held and "significantly higher" in text and "vanishes" in text
    assert not decide(False, 0.3, 1e-4, 0.2)[0]  # accuracy not significantly better
    held, text = decide(True, 0.001, grad_ratio_sigmoid=0.5, grad_ratio_relu=0.2)
    assert not held and "does not vanish" in text
    assert "p = 0.3" in decide(False, 0.3, 1e-4, 0.2)[1]


def test_rms_gradients_match_autograd_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    rms = rms_gradients(model, x, y)
    loss = nn.functional.cross_entropy(model(x), y)
    g1, g2 = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    assert rms == pytest.approx([float(g1.pow(2).mean().sqrt()), float(g2.pow(2).mean().sqrt())])
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


def test_sigmoid_stack_shrinks_the_gradient_reaching_the_first_layer():
    torch.manual_seed(0)

    def deep(act):
        layers = []
        for _ in range(6):
            layers += [nn.Linear(32, 32), act()]
        return nn.Sequential(*layers, nn.Linear(32, 10))

    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    sig, relu = rms_gradients(deep(nn.Sigmoid), x, y), rms_gradients(deep(nn.ReLU), x, y)
    assert sig[0] / sig[-1] < relu[0] / relu[-1]
