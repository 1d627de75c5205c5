"""# Equivariance for one forward pass: frames and canonicalization

`EquiTune` runs the model on all |G| transformed copies of every input. A *frame* picks, per input, a few group
elements `F(x)` and averages only over those: `M_F(x) = 1/|F(x)| sum_{g in F(x)} g^-1 M(g x)`. It is exactly as
equivariant as equitune whenever the frame moves with the input, `F(h x) = F(x) h^-1` (Puny et al., "Frame
averaging", ICLR 2022). A frame of size one is a *canonicalization*: move the input to a canonical pose, run the
model once, move the output back (Kaba et al., ICML 2023).

In this tutorial you will:

1. canonicalize an image classifier with a learned scorer (`Canonicalize` + `OrbitScores`), check its invariance for
   C4 and D4 in float64, and count the backbone calls (one per image instead of 4 or 8);
2. see why ties must be kept: an image that a rotation leaves unchanged needs its whole stabiliser in the frame;
3. build a frame for word groups from a rule (`support_frame`): send every command into the words the model was
   trained on, as for SCAN's "jump", and check that the frame-averaged tagger is equivariant.

It needs torch alone and runs in a second.
"""

# %%
# A classifier that is not rotation-invariant, and a small *scorer*: any network that gives one number per image.
# `OrbitScores(scorer, c4)` scores every rotated copy, `scores[g, b] = scorer(g x_b)`, which moves with the input by
# construction: `score(g, h x) = score(g h, x)`. `Canonicalize` runs the classifier on the lowest-scoring copy only.
import torch
from torch import nn

from equitune.core import (
    Canonicalize,
    EquiTune,
    FrameAverage,
    OrbitScores,
    assert_equivariant,
    assert_not_equivariant,
    image_action,
    parse_group_spec,
    support_frame,
)

torch.manual_seed(0)
classifier = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
scorer = nn.Sequential(nn.Conv2d(3, 1, 5), nn.Flatten(), nn.Linear(12 * 12, 1))
classifier, scorer = classifier.double().eval(), scorer.double().eval()
images = torch.rand(4, 3, 16, 16, dtype=torch.float64)

for name in ("c4", "d4"):
    group = image_action(name)
    assert_not_equivariant(classifier, group, images)
    model = Canonicalize(classifier, group, OrbitScores(scorer, group)).eval()
    errors = assert_equivariant(model, group, images)  # float64: within 1e-10 of the scores' size
    print(f"{name}: canonicalized classifier invariant, worst error {max(errors.values()):.1e}")

# %%
# Count what reaches the classifier: one copy per image, against |G| copies for equitune.


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


d4 = image_action("d4")
counted = Counting(classifier)
Canonicalize(counted, d4, OrbitScores(scorer, d4)).eval()(images)
canonical_rows = counted.rows
counted.rows = 0
EquiTune(counted, d4)(images)
print(f"backbone rows for 4 images under D4: canonicalize {canonical_rows}, equitune {counted.rows}")
assert (canonical_rows, counted.rows) == (4, 32)

# %%
# An image that a quarter turn leaves unchanged has four identical copies with identical scores. Picking one of them
# by index would break equivariance for equivariant outputs (feature maps); the frame keeps all tied elements, here
# the whole of C4. Built from one quadrant, the image below is exactly symmetric.
quadrant = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
quadrant[..., :8, :8] = torch.rand(3, 8, 8, dtype=torch.float64)
symmetric = sum(quadrant.rot90(k, (-2, -1)) for k in range(4))
c4 = image_action("c4")
features = nn.Conv2d(3, 2, 3, padding=1).double().eval()
canonical_maps = Canonicalize(features, c4, OrbitScores(scorer, c4), output_action=c4).eval()
frame = canonical_maps.frame_mask(symmetric)
print(f"frame of the symmetric image: {frame[:, 0].tolist()}")
assert frame.all()
assert_equivariant(canonical_maps, c4, torch.cat([images, symmetric]), c4)

# %%
# Word groups: a frame from a rule. A SCAN model that met "jump" only alone cannot use it in context, but it knows
# "run". `support_frame(action, allowed)` keeps the elements that map the command into the allowed words: a command
# with "jump" is decoded as the same command with "run" and the output mapped back (one decode); a command with
# neither word is fixed by the swap, so its frame is the whole group; one with both has an empty frame, which falls
# back to the whole group. Any model on token ids works the same way; here a small recurrent tagger.
vocab = ["<pad>", "walk", "run", "jump", "twice", "and"]
outputs = ["<pad>", "WALK", "RUN", "JUMP"]
swap = parse_group_spec({"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]})
on_ids, on_scores = swap.bind(vocab).on_ids, swap.bind_output(outputs).on_scores


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(len(vocab), 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, ids):
        return self.out(self.rnn(self.embed(ids))[0])


tagger = Tagger().double().eval()
rule = support_frame(on_ids, [i for i, word in enumerate(vocab) if word != "jump"])
commands = torch.tensor([[3, 4, 0], [2, 5, 1], [1, 4, 0], [3, 5, 2]])  # jump twice; run and walk; walk twice; both
frame = rule(commands)
print("frames (identity, swap) per command:", frame.T.tolist())
assert frame.T.tolist() == [[False, True], [True, False], [True, True], [False, False]]
framed = FrameAverage(tagger, on_ids, rule, output_action=on_scores).eval()
assert_not_equivariant(tagger, on_ids, commands, on_scores)
assert_equivariant(framed, on_ids, commands, on_scores)
print("frame-averaged tagger: equivariant to jump <-> run")
