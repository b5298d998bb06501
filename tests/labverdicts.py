"""Each lab's verdict recomputed from the statistics its summary.json states (for the lab smoke tests).

A lab's ``held`` must follow from its own ``evidence`` by the rule its claim states; these
functions apply that rule by hand to the stated numbers (alpha = 0.05, the labs' default), so a
smoke test checks the verdict is consistent with its evidence, not only that it is a bool.
"""

from __future__ import annotations

import math

ALPHA = 0.05


def significant(p) -> bool:
    return p is not None and math.isfinite(p) and p < ALPHA


def finite(v) -> bool:
    return v is not None and math.isfinite(v)


def holm_by_hand(ps: list[float]) -> list[float]:
    """Holm 1979 step-down adjusted p-values (NaN stays NaN), by the textbook recipe."""
    order = sorted((p, i) for i, p in enumerate(ps) if finite(p))
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


def activations(ev: dict) -> bool:
    relu, sigmoid = ev["relu"], ev["sigmoid"]
    relu_better = significant(sigmoid["p_vs_relu"]) and sigmoid["test_acc"] < relu["test_acc"]
    return relu_better and sigmoid["grad_first_over_last"] < relu["grad_first_over_last"]


def dropout(ev: dict) -> bool:
    high = ev[ev["compared"]["high"]]
    return high["gap_diff_vs_p0"] is not None and high["gap_diff_vs_p0"] < 0 and significant(high["gap_p_vs_p0"])


def mixup(ev: dict) -> bool:
    rows = [v for v in ev.values() if isinstance(v, dict) and v.get("ece_p") is not None and v.get("acc_p") is not None]
    adjusted = holm_by_hand([r["ece_p"] for r in rows])
    return any(r["ece_diff"] < 0 and p < ALPHA and not (r["acc_diff"] < 0 and r["acc_p"] < ALPHA)
               for r, p in zip(rows, adjusted))


def regularization(ev: dict) -> bool:
    t = ev["tests"]

    def more(key):
        return t[key]["diff"] > 0 and significant(t[key]["p"])

    return (more("frac_zero_l1_minus_l2") and more("frac_zero_l1_minus_none")
            and t["weight_norm_l2_minus_none"]["diff"] < 0 and significant(t["weight_norm_l2_minus_none"]["p"]))


def preprocessing(ev: dict) -> bool:
    others = [v for k, v in ev.items() if isinstance(v, dict) and k != ev["baseline"] and "loss_area_p" in v]
    return any(finite(v["loss_area_diff"]) and v["loss_area_diff"] < 0 and significant(v["loss_area_p"])
               for v in others)


def batchnorm(ev: dict) -> bool:
    means = [c["test_acc"] for c in ev["cells"].values() if finite(c["test_acc"])]
    threshold = ev["trains_fraction"] * max(means) if means else math.inf
    highest = {}
    for norm in ("none", "batch"):
        lrs = [c["lr"] for c in ev["cells"].values() if c["norm"] == norm and c["diverged_seeds"] == 0
               and finite(c["test_acc"]) and c["test_acc"] >= threshold]
        highest[norm] = max(lrs, default=None)
    return highest["batch"] is not None and (highest["none"] is None or highest["batch"] > highest["none"])


def init(ev: dict) -> bool:
    th, cells, matched, deep = ev["thresholds"], ev["cells"], ev["matched"], ev["deep_net"]

    def value(net, scheme, key):
        c = next((c for c in cells.values() if c["net"] == net and c["scheme"] == scheme), {})
        v = c.get(key)
        return v if v is not None else math.nan

    def below(x, limit):
        return finite(x) and x < limit

    nets = list(matched)
    lo, hi = th["healthy_band"]
    collapse = all(below(value(n, "normal(0.01)", "act_std_ratio"), th["collapse_ratio"]) for n in nets)
    saturates = finite(value("tanh", "normal(1.0)", "saturated_deep")) \
        and value("tanh", "normal(1.0)", "saturated_deep") > th["saturated_deep"]
    kaiming_keeps = all(finite(value(n, "kaiming", "act_std_ratio")) and lo <= value(n, "kaiming", "act_std_ratio") <= hi
                        for n in ("relu", deep))
    xavier_collapses_deep = below(value(deep, "xavier", "act_std_ratio"), th["collapse_ratio"])
    tanh_ratio, tanh_sat = value("tanh", "xavier", "act_std_ratio"), value("tanh", "xavier", "saturated_deep")
    xavier_keeps_tanh = finite(tanh_ratio) and tanh_ratio >= th["collapse_ratio"] and finite(tanh_sat) \
        and tanh_sat <= th["saturated_deep"]
    better = all(finite(value(n, matched[n], "diff_vs_small")) and value(n, matched[n], "diff_vs_small") > 0
                 and significant(value(n, matched[n], "p_vs_small")) for n in nets)
    deep_better = finite(value(deep, "kaiming", "diff_vs_xavier")) and value(deep, "kaiming", "diff_vs_xavier") > 0 \
        and significant(value(deep, "kaiming", "p_vs_xavier"))
    return collapse and saturates and kaiming_keeps and xavier_collapses_deep and xavier_keeps_tanh and better \
        and deep_better


def dying_relu(ev: dict) -> bool:
    th, tests = ev["thresholds"], ev["tests"]

    def cell(activation):
        return next(c for c in ev["cells"].values() if c["activation"] == activation and c["lr"] == ev["high_lr"])

    def up(key):
        return finite(tests[key]["diff"]) and tests[key]["diff"] > 0 and significant(tests[key]["p"])

    relu_dead = cell("relu")["dead"]
    dies = finite(relu_dead) and relu_dead >= th["dead_warn"] and up("relu_dead_high_minus_normal")
    return dies and up("relu_dead_minus_leaky_never_positive_high") and up("acc_leaky_minus_relu_high") \
        and cell("leaky_relu")["diverged_seeds"] == 0


def selu(ev: dict) -> bool:
    th, cells = ev["thresholds"], ev["cells"]
    lo, hi = th["var_band"]

    def inside(label):
        c = cells.get(label, {})
        means, variances = c.get("act_mean_by_layer_init") or [], c.get("act_var_by_layer_init") or []
        return bool(means) and len(means) == len(variances) and all(
            finite(m) and finite(v) and abs(m) <= th["mean_max"] and lo <= v <= hi for m, v in zip(means, variances))

    def measured(label):
        return bool(cells.get(label, {}).get("act_mean_by_layer_init"))

    accs = [c["test_acc"] for c in cells.values() if finite(c["test_acc"])]
    snn = cells.get(ev["snn"], {})
    trains = bool(accs) and finite(snn.get("test_acc")) and snn["test_acc"] >= th["trains_fraction"] * max(accs) \
        and snn["diverged_seeds"] == 0
    return inside(ev["snn"]) and all(measured(o) and not inside(o) for o in ev["others"]) and trains


def transfer(ev: dict) -> bool:
    low, high = ev["cells"][str(ev["lowest"])], ev["cells"][str(ev["highest"])]
    cost, scratch = low["fine_tune_cost"], low["scratch_cost"]
    beats = finite(low["gain"]) and low["gain"] > 0 and significant(low["gain_p"]) and low["fine_tune"]["diverged"] == 0
    # the gain shrinks: per-seed gains at the lowest vs the highest label count, paired by hand
    seeds = [s for s in low["gain_seeds"] if s in high["gain_seeds"]]
    diffs = [low["gain_seeds"][s] - high["gain_seeds"][s] for s in seeds]
    shrinks = len(diffs) >= 2 and sum(diffs) > 0 and significant(ev["shrink"]["p"]) \
        and math.isclose(ev["shrink"]["diff"], sum(diffs) / len(diffs), abs_tol=1e-12)
    faster = cost["n"] > 0 and cost["reached"] == cost["n"] and cost["epochs"] < scratch["epochs"]
    return beats and shrinks and faster


def orthogonal(ev: dict) -> bool:
    lo, hi = ev["band"]
    cells, decided = ev["cells"], ev["decided"]

    def inside(r):
        return finite(r) and lo <= r <= hi

    adjusted = holm_by_hand([cells[k]["p"] if finite(cells[k]["p"]) else math.nan for k in decided])
    better = [finite(cells[k]["acc_diff_orthogonal_minus"]) and cells[k]["acc_diff_orthogonal_minus"] > 0
              and p < ALPHA for k, p in zip(decided, adjusted)]
    return bool(decided) and inside(cells["orthogonal"]["grad_ratio"]) \
        and all(finite(cells[k]["grad_ratio"]) and not inside(cells[k]["grad_ratio"]) for k in decided) and all(better)


def schedules(ev: dict) -> bool:
    t = ev["tests"]

    def beats(loss_diff, loss_p, acc_diff, acc_p):
        worse_test = finite(acc_diff) and acc_diff < 0 and significant(acc_p)
        return finite(loss_diff) and loss_diff < 0 and finite(loss_p) and loss_p < ALPHA and not worse_test

    m = t["momentum_minus_sgd"]
    decaying = [v for k, v in t.items() if k.startswith("momentum-")]
    adjusted = holm_by_hand([v["loss_p_raw"] if finite(v["loss_p_raw"]) else math.nan for v in decaying])
    return beats(m["loss_diff"], m["loss_p"], m["acc_diff"], m["acc_p"]) \
        and any(beats(v["loss_diff"], p, v["acc_diff"], v["acc_p"]) for v, p in zip(decaying, adjusted))


def augmentation(ev: dict) -> bool:
    rows = [v for k, v in ev.items() if isinstance(v, dict) and k != ev["baseline"]
            and v.get("gap_p") is not None and v.get("acc_p") is not None]
    gap_adj = holm_by_hand([r["gap_p"] for r in rows])
    acc_adj = holm_by_hand([r["acc_p"] for r in rows])
    return any(r["gap_diff"] < 0 and g < ALPHA and r["acc_diff"] > 0 and a < ALPHA
               for r, g, a in zip(rows, gap_adj, acc_adj))


def ensembles(ev: dict) -> bool:
    from scipy import stats

    if "by_k" not in ev:
        return False
    top = ev["by_k"][str(ev["largest_k"])]
    gains = [e - m for e, m in zip(top["group_accs"], top["group_member_means"])]
    mean_gain = sum(gains) / len(gains)
    if len(gains) < 2:
        return False
    if max(gains) - min(gains) < 1e-12:  # no spread: a constant non-zero gain is certain
        p = 0.0 if abs(mean_gain) > 1e-12 else 1.0
    else:
        p = stats.ttest_rel(top["group_accs"], top["group_member_means"]).pvalue
    return mean_gain > 0 and p < ALPHA and finite(top["std_acc"]) and top["std_acc"] < ev["member_std"]


def assert_consistent(lab: str, summary: dict) -> None:
    """summary.json's ``held`` is what its evidence implies (see the module doc)."""
    expected = globals()[lab](summary["evidence"])
    assert summary["held"] is expected, f"{lab}: held={summary['held']} but its evidence implies {expected}"
