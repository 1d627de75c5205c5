"""The wrappers are exactly invariant/equivariant for every group, on several random backbones, in float64.

Equivariance is asserted with ``assert_equivariant`` (float64: errors within 1e-10 of the output's scale; rounding
across batch positions is ~1e-16); the raw backbones must miss it by more than 1e-3 (``assert_not_equivariant``),
so every equivariance test could fail. ``EXACT`` bounds the hand-computed comparisons below.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.groups import IMAGE_GROUPS, GroupSpecError, WordCycles, image_action, parse_group_spec
from equitune.core.proxies import PROXIES, example_scores
from equitune.core.wrappers import EquiTune, EquiZero, LambdaEquiTune
from helpers.word_groups import INPUT_VOCAB, OUTPUT_VOCAB, WORD_SPECS

EXACT = 1e-10

ORDER_ABOVE_TWO = ["3cycle", "4cycle", "two_3cycles"]
ORDER_TWO = ["swap", "two_swaps"]
SEQ_LEN, CLASSES, IMAGE_SIZE = 6, 4, 6


# ------------------------------------------------------------------------------------- random backbones
def cnn_classifier() -> nn.Module:
    """Image classifier ``[B, 3, H, W] -> [B, CLASSES]`` whose flatten + linear head sees absolute positions."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * IMAGE_SIZE * IMAGE_SIZE, CLASSES))


def cnn_features() -> nn.Module:
    """Fully convolutional ``[B, 3, H, W] -> [B, 2, H, W]`` feature maps (random, so not equivariant)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 2, 3, padding=1))


class TokenMLP(nn.Module):
    """Embedding + MLP over the flattened sequence ``[B, T] -> [B, outputs]`` (position-aware)."""

    def __init__(self, outputs: int):
        super().__init__()
        self.embed = nn.Embedding(len(INPUT_VOCAB), 5)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(5 * SEQ_LEN, 16), nn.Tanh(), nn.Linear(16, outputs))

    def forward(self, ids):
        return self.mlp(self.embed(ids))


class GRUTagger(nn.Module):
    """Recurrent net on token sequences: ``[B, T] -> [B, T, |output vocab|]`` per-position scores.

    ``mask`` (keyword, ``[B, T]``) zeroes positions: a batched input the group leaves alone.
    """

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(INPUT_VOCAB), 6)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.out = nn.Linear(8, len(OUTPUT_VOCAB))

    def forward(self, ids, mask=None):
        scores = self.out(self.gru(self.embed(ids))[0])
        return scores if mask is None else scores * mask.unsqueeze(-1)


class TokenLambda(nn.Module):
    """A lambda network on token ids: ``[B, T] -> [B, 1]``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(INPUT_VOCAB), 3)
        self.score = nn.Sequential(nn.Flatten(), nn.Linear(3 * SEQ_LEN, 1))

    def forward(self, ids):
        return self.score(self.embed(ids))


def image_lambda() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * (IMAGE_SIZE - 2) ** 2, 1))


def seeded(factory, seed: int = 0, *args):
    torch.manual_seed(seed)
    return factory(*args).double()


def images(seed: int = 0, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def token_ids(spec_name: str, seed: int = 0, batch: int = 4) -> torch.Tensor:
    """Random sentences that each contain every word the group moves (so a non-equivariant model shows it)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(INPUT_VOCAB), (batch, SEQ_LEN), generator=gen)
    moved = [INPUT_VOCAB.index(w) for cycle in WORD_SPECS[spec_name]["cycles"] for w in cycle]
    for row in ids:
        row[torch.randperm(SEQ_LEN, generator=gen)[:len(moved)]] = torch.tensor(moved)
    return ids


def word_actions(spec_name: str):
    cycles = parse_group_spec(WORD_SPECS[spec_name])
    return cycles.bind(INPUT_VOCAB).on_ids, cycles.bind_output(OUTPUT_VOCAB).on_scores


def sum_of_squares_proxy(outputs: torch.Tensor) -> torch.Tensor:
    """Lower is better; invariant to rotating/flipping feature maps (a proxy must not see the output action)."""
    return -outputs.pow(2).flatten(2).sum(-1)


def wrap(method: str, backbone, input_action, output_action=None, lambda_net=None, proxy="entropy", **kwargs):
    if method == "equitune":
        return EquiTune(backbone, input_action, output_action, **kwargs)
    if method == "lambda_equitune":
        return LambdaEquiTune(backbone, lambda_net, input_action, output_action, **kwargs)
    if method == "equizero_entropy":
        return EquiZero(backbone, input_action, output_action, proxy=proxy, **kwargs)
    if method == "equizero_max_prob":
        return EquiZero(backbone, input_action, output_action, proxy="max_prob" if proxy == "entropy" else proxy,
                        **kwargs)
    raise AssertionError(method)


METHODS = ["equitune", "lambda_equitune", "equizero_entropy", "equizero_max_prob"]
SEEDS = [0, 1]


# ------------------------------------------------------------------------------- images: CNN backbones
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("group", IMAGE_GROUPS)
def test_cnn_classifier_becomes_invariant(group, method, seed):
    action = image_action(group)
    backbone, x = seeded(cnn_classifier, seed), images(seed)
    model = wrap(method, backbone, action, lambda_net=seeded(image_lambda, seed + 10)).eval()
    if group != "trivial":
        assert_not_equivariant(backbone, action, x)
    assert_equivariant(model, action, x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("group", IMAGE_GROUPS)
def test_cnn_feature_maps_become_equivariant(group, method, seed):
    action = image_action(group)
    backbone, x = seeded(cnn_features, seed), images(seed)
    model = wrap(method, backbone, action, action, lambda_net=seeded(image_lambda, seed + 10),
                 proxy=sum_of_squares_proxy).eval()
    if group != "trivial":
        assert_not_equivariant(backbone, action, x, action)
    assert_equivariant(model, action, x, action)


@pytest.mark.parametrize("group", IMAGE_GROUPS)
def test_lambda_equitune_with_a_head_on_features_is_invariant(group):
    action = image_action(group)
    features = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()))
    head = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4 * IMAGE_SIZE ** 2, CLASSES)), 1)
    lambda_net = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4 * IMAGE_SIZE ** 2, 1)), 2)
    model = LambdaEquiTune(features, lambda_net, action, head=head).eval()
    x = images()
    if group != "trivial":
        assert_not_equivariant(nn.Sequential(features, head), action, x)
    assert_equivariant(model, action, x)


# ---------------------------------------------------------------------- tokens: MLP and GRU backbones
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", WORD_SPECS)
def test_token_mlp_classifier_becomes_invariant(spec, method, seed):
    ids_action, _ = word_actions(spec)
    backbone, x = seeded(TokenMLP, seed, CLASSES), token_ids(spec, seed)
    model = wrap(method, backbone, ids_action, lambda_net=seeded(TokenLambda, seed + 10)).eval()
    assert_not_equivariant(backbone, ids_action, x)
    assert_equivariant(model, ids_action, x)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", WORD_SPECS)
def test_token_mlp_vocabulary_scores_become_equivariant(spec, method, seed):
    ids_action, scores_action = word_actions(spec)
    backbone, x = seeded(TokenMLP, seed, len(OUTPUT_VOCAB)), token_ids(spec, seed)
    model = wrap(method, backbone, ids_action, scores_action, lambda_net=seeded(TokenLambda, seed + 10)).eval()
    assert_not_equivariant(backbone, ids_action, x, scores_action)
    assert_equivariant(model, ids_action, x, scores_action)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", WORD_SPECS)
def test_gru_per_position_scores_become_equivariant(spec, method, seed):
    ids_action, scores_action = word_actions(spec)
    backbone, x = seeded(GRUTagger, seed), token_ids(spec, seed)
    model = wrap(method, backbone, ids_action, scores_action, lambda_net=seeded(TokenLambda, seed + 10)).eval()
    assert_not_equivariant(backbone, ids_action, x, scores_action)
    assert_equivariant(model, ids_action, x, scores_action)


# ------------------------------------------------ the reference code's mistake: mapping back by g, not g^-1
class MapsBackByG:
    """A deliberately wrong output action: row g of the stack is mapped back by g instead of g^-1."""

    def __init__(self, action):
        self.action, self.group = action, action.group

    def apply(self, y, g):
        return self.action.apply(y, g)

    def untransform_all(self, y):
        return torch.stack([self.action.apply(y[g], g) for g in self.group])


@pytest.mark.parametrize("spec", ORDER_ABOVE_TWO)
def test_mapping_back_by_g_is_caught_for_cycles_of_order_above_two(spec):
    ids_action, scores_action = word_actions(spec)
    backbone, x = seeded(GRUTagger), token_ids(spec)
    right = EquiTune(backbone, ids_action, scores_action)
    wrong = EquiTune(backbone, ids_action, MapsBackByG(scores_action))
    assert_equivariant(right, ids_action, x, scores_action)
    assert_not_equivariant(wrong, ids_action, x, scores_action)


@pytest.mark.parametrize("spec", ORDER_TWO)
def test_mapping_back_by_g_goes_unnoticed_for_swaps(spec):
    # Why the order-3/4 tests matter: in a group where every g = g^-1 the mistake is invisible.
    ids_action, scores_action = word_actions(spec)
    wrong = EquiTune(seeded(GRUTagger), ids_action, MapsBackByG(scores_action))
    assert_equivariant(wrong, ids_action, token_ids(spec), scores_action)


@pytest.mark.parametrize("group, caught", [("c4", True), ("d4", True), ("hflip", False), ("vflip", False)])
def test_mapping_back_by_g_on_feature_maps(group, caught):
    action = image_action(group)
    wrong = EquiTune(seeded(cnn_features), action, MapsBackByG(action))
    if caught:
        assert_not_equivariant(wrong, action, images(), action)
    else:
        assert_equivariant(wrong, action, images(), action)


# ------------------------------------------------------------------- the average, computed by hand
def per_element_outputs(backbone, input_action, output_action, x):
    """``g^-1 . M(g . x)`` for each g, one backbone call per element (the slow, obvious way)."""
    outputs = []
    for g in input_action.group:
        y = backbone(input_action.apply(x, g))
        outputs.append(y if output_action is None else output_action.apply(y, input_action.group.inverse(g)))
    return torch.stack(outputs)


@pytest.mark.parametrize("spec", ["4cycle", "two_3cycles"])
def test_equitune_is_the_group_average_computed_by_hand(spec):
    ids_action, scores_action = word_actions(spec)
    backbone, x = seeded(GRUTagger), token_ids(spec)
    expected = per_element_outputs(backbone, ids_action, scores_action, x)
    model = EquiTune(backbone, ids_action, scores_action)
    torch.testing.assert_close(model.group_outputs(x), expected, rtol=0, atol=EXACT)
    torch.testing.assert_close(model(x), expected.mean(0), rtol=0, atol=EXACT)


def test_equitune_on_d4_feature_maps_is_the_group_average_computed_by_hand():
    action = image_action("d4")
    backbone, x = seeded(cnn_features), images()
    expected = per_element_outputs(backbone, action, action, x).mean(0)
    torch.testing.assert_close(EquiTune(backbone, action, action)(x), expected, rtol=0, atol=EXACT)


def test_lambda_equitune_is_the_weighted_average_computed_by_hand():
    ids_action, scores_action = word_actions("3cycle")
    backbone, lambda_net, x = seeded(GRUTagger), seeded(TokenLambda, 1), token_ids("3cycle")
    outputs = per_element_outputs(backbone, ids_action, scores_action, x)
    raw = torch.stack([torch.nn.functional.softplus(lambda_net(ids_action.apply(x, g))).squeeze(-1) + 1e-6
                       for g in ids_action.group])
    weights = raw / raw.sum(0)
    model = LambdaEquiTune(backbone, lambda_net, ids_action, scores_action)
    got_outputs, got_weights = model.outputs_and_weights(x)
    torch.testing.assert_close(got_weights, weights, rtol=0, atol=EXACT)
    torch.testing.assert_close(model(x), (weights[..., None, None] * outputs).sum(0), rtol=0, atol=EXACT)


# ------------------------------------------------------------------------------- chunking changes nothing
@pytest.mark.parametrize("method", METHODS)
def test_chunked_equals_unchunked_on_d4(method):
    action = image_action("d4")
    backbone, lambda_net, x = seeded(cnn_classifier), seeded(image_lambda, 1), images()
    expected = wrap(method, backbone, action, lambda_net=lambda_net).eval()(x)
    for chunk_size in range(1, action.group.order + 2):
        got = wrap(method, backbone, action, lambda_net=lambda_net, chunk_size=chunk_size).eval()(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=f"chunk_size={chunk_size}")


@pytest.mark.parametrize("method", METHODS)
def test_chunked_equals_unchunked_on_a_word_cycle(method):
    ids_action, scores_action = word_actions("4cycle")
    backbone, lambda_net, x = seeded(GRUTagger), seeded(TokenLambda, 1), token_ids("4cycle")
    expected = wrap(method, backbone, ids_action, scores_action, lambda_net=lambda_net).eval()(x)
    for chunk_size in range(1, ids_action.group.order + 2):
        got = wrap(method, backbone, ids_action, scores_action, lambda_net=lambda_net, chunk_size=chunk_size).eval()(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=f"chunk_size={chunk_size}")


def test_backbone_sees_one_batch_of_all_group_elements():
    calls = []

    class Recorder(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.flatten(1)

    action, x = image_action("d4"), images(batch=3)
    EquiTune(Recorder(), action)(x)
    assert calls == [8 * 3]
    calls.clear()
    EquiTune(Recorder(), action, chunk_size=3)(x)
    assert calls == [9, 9, 6]


# ------------------------------------------------------------------------------------------- gradients
def nonzero_grads(module: nn.Module) -> dict[str, bool]:
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_the_backbone_and_the_lambda_net(method):
    ids_action, scores_action = word_actions("3cycle")
    backbone, lambda_net = seeded(GRUTagger), seeded(TokenLambda, 1)
    model = wrap(method, backbone, ids_action, scores_action, lambda_net=lambda_net).train()
    model(token_ids("3cycle")).pow(2).sum().backward()
    assert all(nonzero_grads(backbone).values()), nonzero_grads(backbone)
    if method == "lambda_equitune":
        assert all(nonzero_grads(lambda_net).values()), nonzero_grads(lambda_net)


def test_gradients_reach_lambda_equitune_head_and_features():
    action = image_action("c4")
    features = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()))
    head = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4 * IMAGE_SIZE ** 2, CLASSES)), 1)
    lambda_net = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4 * IMAGE_SIZE ** 2, 1)), 2)
    model = LambdaEquiTune(features, lambda_net, action, head=head)
    model(images()).pow(2).sum().backward()
    for module in (features, head, lambda_net):
        assert all(nonzero_grads(module).values())


def test_equizero_without_straight_through_still_trains_the_backbone():
    action = image_action("c4")
    backbone = seeded(cnn_classifier)
    EquiZero(backbone, action, straight_through=False).train()(images()).pow(2).sum().backward()
    assert all(nonzero_grads(backbone).values())


# ------------------------------------------------------------------------------------------- equizero
def test_equizero_picks_the_most_confident_element():
    # Three elements' probabilities over 3 classes, for 3 examples (rows: elements; columns: examples).
    # Example 0: element 1 is peaked. Example 1: entropy prefers (1/2, 1/2, 0) but max-prob prefers (0.6, 0.2, 0.2).
    # Example 2: a zero probability (a -inf log-prob) on a less confident element must not win by turning into NaN.
    probabilities = [
        [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.45, 0.55, 0.0]],
        [[0.98, 0.01, 0.01], [0.6, 0.2, 0.2], [0.9, 0.05, 0.05]],
        [[0.5, 0.3, 0.2], [0.4, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3]],
    ]
    outputs = torch.tensor(probabilities, dtype=torch.float64).log()
    action = image_action("trivial")  # any group: select() only looks at the stacked outputs
    for proxy, expected in (("entropy", [1, 0, 1]), ("max_prob", [1, 1, 1])):
        chosen, selected = EquiZero(nn.Identity(), action, proxy=proxy).select(outputs)
        assert chosen.tolist() == expected, proxy
        assert torch.equal(selected, outputs[expected, [0, 1, 2]])

    def entropy(probs):
        return -sum(p * math.log(p) for p in probs if p > 0)

    expected_entropies = torch.tensor([[entropy(p) for p in row] for row in probabilities], dtype=torch.float64)
    torch.testing.assert_close(example_scores(PROXIES["entropy"](outputs)), expected_entropies, rtol=0, atol=1e-12)
    expected_max_probs = torch.tensor([[max(p) for p in row] for row in probabilities], dtype=torch.float64)
    torch.testing.assert_close(example_scores(PROXIES["max_prob"](outputs)), -expected_max_probs, rtol=0, atol=1e-12)


def test_equizero_with_a_custom_proxy():
    outputs = torch.tensor([[[3.0, 0.0], [1.0, 0.0]], [[2.0, 9.0], [5.0, 0.0]], [[4.0, 0.0], [0.5, 0.0]]])
    model = EquiZero(nn.Identity(), image_action("hflip"), proxy=lambda y: y[..., 0])  # lower first entry wins
    chosen, selected = model.select(outputs)
    assert chosen.tolist() == [1, 2]
    assert torch.equal(selected, torch.tensor([[2.0, 9.0], [0.5, 0.0]]))


def test_equizero_forward_returns_the_selected_element_output():
    ids_action, scores_action = word_actions("4cycle")
    backbone, x = seeded(GRUTagger), token_ids("4cycle")
    expected_outputs = per_element_outputs(backbone, ids_action, scores_action, x)
    for proxy in ("entropy", "max_prob"):
        best = example_scores(PROXIES[proxy](expected_outputs)).argmin(0)
        model = EquiZero(backbone, ids_action, scores_action, proxy=proxy).eval()
        torch.testing.assert_close(model(x), expected_outputs[best, torch.arange(x.shape[0])], rtol=0, atol=EXACT)


def test_equizero_straight_through_value_is_equizero_and_gradient_is_equitune():
    action = image_action("d4")
    backbone, x = seeded(cnn_classifier), images()
    weights = torch.randn(x.shape[0], CLASSES, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    zero, tune = EquiZero(backbone, action), EquiTune(backbone, action)
    trained_value = zero.train()(x)
    torch.testing.assert_close(trained_value, zero.eval()(x), rtol=0, atol=1e-12)
    assert (trained_value - tune(x)).abs().max() > 1e-3, "equizero and equitune must differ for the test to mean much"
    params = list(backbone.parameters())
    zero_grads = torch.autograd.grad((zero.train()(x) * weights).sum(), params)
    tune_grads = torch.autograd.grad((tune(x) * weights).sum(), params)
    for got, expected in zip(zero_grads, tune_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------- lambda weights
def test_lambda_weights_are_positive_and_sum_to_one():
    action = image_action("d4")
    lambda_net = seeded(image_lambda, 1)
    with torch.no_grad():
        lambda_net[-1].bias.fill_(-60.0)  # scores far below zero: softplus alone would underflow to 0
    model = LambdaEquiTune(seeded(cnn_classifier), lambda_net, action)
    _, weights = model.outputs_and_weights(images())
    assert weights.shape == (8, 3)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ trivial group
@pytest.mark.parametrize("method", METHODS)
def test_trivial_group_reproduces_the_plain_backbone_exactly(method):
    backbone, x = seeded(cnn_classifier), images()
    model = wrap(method, backbone, image_action("trivial"), lambda_net=seeded(image_lambda, 1)).eval()
    assert torch.equal(model(x), backbone(x))


# ------------------------------------------------------------------------------------ module registration
@pytest.mark.parametrize("method", METHODS)
def test_backbone_and_lambda_net_are_registered_submodules(method):
    torch.manual_seed(0)
    backbone, lambda_net = cnn_classifier(), image_lambda()
    model = wrap(method, backbone, image_action("c4"), lambda_net=lambda_net)
    owned = {id(p) for p in model.parameters()}
    assert {id(p) for p in backbone.parameters()} <= owned
    assert any(key.startswith("backbone.") for key in model.state_dict())
    if method == "lambda_equitune":
        assert {id(p) for p in lambda_net.parameters()} <= owned
        assert any(key.startswith("lambda_net.") for key in model.state_dict())
    model.eval()
    assert not backbone.training and not any(m.training for m in model.modules())
    model.train()
    assert backbone.training
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in backbone.parameters())
    assert model(images()).dtype == torch.float64
    copy = wrap(method, cnn_classifier().double(), image_action("c4"), lambda_net=image_lambda().double())
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.eval()(images()), model.eval()(images()))


# ---------------------------------------------------------------------------------- inputs left alone
class ScaledTagger(GRUTagger):
    def forward(self, ids, scale):
        return super().forward(ids) * scale[:, None, None]


def test_an_input_without_an_action_is_repeated_for_every_element():
    ids_action, scores_action = word_actions("3cycle")
    backbone, x = seeded(ScaledTagger), token_ids("3cycle")
    scale = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    model = EquiTune(backbone, (ids_action, None), scores_action)
    assert_equivariant(model, (ids_action, None), (x, scale), scores_action)
    expected = torch.stack([scores_action.apply(backbone(ids_action.apply(x, g), scale), ids_action.group.inverse(g))
                            for g in ids_action.group]).mean(0)
    torch.testing.assert_close(model(x, scale), expected, rtol=0, atol=EXACT)


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_tensor_keyword_arguments_are_repeated_for_every_element(chunk_size):
    ids_action, scores_action = word_actions("3cycle")
    backbone, x = seeded(GRUTagger), token_ids("3cycle")
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) > 0.3).double()
    inverse = ids_action.group.inverse
    expected = torch.stack([scores_action.apply(backbone(ids_action.apply(x, g), mask=mask), inverse(g))
                            for g in ids_action.group]).mean(0)
    got = EquiTune(backbone, ids_action, scores_action, chunk_size=chunk_size)(x, mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=EXACT)


# -------------------------------------------------------------------------------------------- bad inputs
def test_mismatched_groups_between_input_and_output_actions():
    with pytest.raises(ValueError, match=r"one group.*'c4' \(order 4\).*'d4' \(order 8\)"):
        EquiTune(cnn_features(), image_action("c4"), output_action=image_action("d4"))
    _, scores_action = word_actions("3cycle")
    with pytest.raises(ValueError, match=r"one group.*'hflip' \(order 2\).*order 3"):
        EquiTune(TokenMLP(len(OUTPUT_VOCAB)), image_action("hflip"), output_action=scores_action)
    ids_action, _ = word_actions("4cycle")
    with pytest.raises(ValueError, match="one group"):
        EquiTune(ScaledTagger(), (ids_action, image_action("hflip")))


def test_unbound_word_cycles_as_an_action():
    cycles = WordCycles([["jump", "run"]])
    with pytest.raises(TypeError, match=r"bind.*vocabulary"):
        EquiTune(TokenMLP(CLASSES), cycles)
    with pytest.raises(TypeError, match=r"\.on_ids"):
        EquiTune(TokenMLP(CLASSES), cycles.bind(INPUT_VOCAB))
    with pytest.raises(TypeError, match=r"\.on_scores"):
        EquiTune(TokenMLP(CLASSES), cycles.bind(INPUT_VOCAB).on_ids, cycles.bind_output(INPUT_VOCAB))


def test_other_construction_errors():
    action = image_action("c4")
    with pytest.raises(TypeError, match="backbone must be an nn.Module"):
        EquiTune(lambda x: x, action)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        EquiTune(cnn_classifier(), action, chunk_size=0)
    with pytest.raises(ValueError, match="at least one input must be acted on"):
        EquiTune(cnn_classifier(), (None,))
    with pytest.raises(ValueError, match=r"unknown equizero proxy 'confidence'; allowed: entropy, max_prob"):
        EquiZero(cnn_classifier(), action, proxy="confidence")
    with pytest.raises(TypeError, match="lambda_net must be an nn.Module"):
        LambdaEquiTune(cnn_classifier(), None, action)


def test_bad_inputs_at_call_time():
    action = image_action("c4")
    model = EquiTune(cnn_classifier(), action)
    with pytest.raises(ValueError, match=r"expected 1 positional input\(s\)"):
        model(torch.zeros(1, 3, 6, 6), torch.zeros(1))
    with pytest.raises(ValueError, match=r"square images; got H=6, W=5"):
        model(torch.zeros(1, 3, 6, 5))
    ids_action, _ = word_actions("swap")
    with pytest.raises(ValueError, match="token id out of range"):
        EquiTune(TokenMLP(CLASSES), ids_action)(torch.full((1, SEQ_LEN), len(INPUT_VOCAB)))


def test_keyword_tensor_that_is_not_batched():
    ids_action, scores_action = word_actions("3cycle")
    model = EquiTune(seeded(GRUTagger), ids_action, scores_action)
    with pytest.raises(ValueError, match=r"keyword tensor 'mask' must be batched.*leading axis 4.*\(6,\)"):
        model(token_ids("3cycle"), mask=torch.ones(SEQ_LEN, dtype=torch.float64))


def test_backbone_that_is_not_batch_first():
    class SequenceFirst(nn.Module):
        def forward(self, ids):
            return ids.T.double()  # [T, B]

    ids_action, _ = word_actions("swap")
    with pytest.raises(ValueError, match=r"batch-first.*leading axis 2\b"):
        EquiTune(SequenceFirst(), ids_action)(token_ids("swap", batch=1))


def test_lambda_net_with_more_than_one_score_per_example():
    action = image_action("c4")
    lambda_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE ** 2, 3))
    with pytest.raises(ValueError, match=r"lambda_net must return one score per example"):
        LambdaEquiTune(cnn_classifier(), lambda_net, action)(images().float())


def test_custom_proxy_with_the_wrong_shape():
    model = EquiZero(nn.Identity(), image_action("hflip"), proxy=lambda y: y.sum())
    with pytest.raises(ValueError, match=r"proxy must return one score per element and example \[2, 3\]"):
        model.select(torch.zeros(2, 3, 4))


def test_group_spec_typo_fails_before_anything_is_built():
    with pytest.raises(GroupSpecError, match="unknown group 'c5'"):
        EquiTune(cnn_classifier(), parse_group_spec("c5"))


def test_equizero_gives_an_input_fixed_by_an_element_the_first_copy_whatever_the_last_bits():
    """A C4-symmetric image has four identical copies; scores that differ only in their last bits (as identical rows of
    one batch can) must not decide: the copies share the first copy's score, so element 0 (identity) is chosen."""
    corner = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64)
    corner[..., :IMAGE_SIZE // 2, :IMAGE_SIZE // 2] = images(0, 1)[..., :IMAGE_SIZE // 2, :IMAGE_SIZE // 2]
    symmetric = sum(corner.rot90(k, (-2, -1)) for k in range(4))  # exact: one nonzero term per pixel
    c4 = image_action("c4")
    backbone = seeded(cnn_features)

    def last_bits_proxy(outputs):  # copy 2 looks a hair better, as round-off could make it
        return torch.tensor([[1.0], [1.0], [1.0 - 1e-15], [1.0]], dtype=torch.float64)

    model = EquiZero(backbone, c4, output_action=c4, proxy=last_bits_proxy).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(symmetric), backbone(symmetric), rtol=0, atol=0)
