"""Vocabularies and word-cycle specs shared by the core group and wrapper tests (orders 2, 3 and 4)."""

INPUT_VOCAB = ["<pad>", "walk", "look", "run", "jump", "left", "right", "twice", "and", "man", "woman", "he", "she"]
OUTPUT_VOCAB = ["<pad>", "WALK", "LOOK", "RUN", "JUMP", "LTURN", "RTURN", "MAN", "WOMAN", "HE", "SHE"]

WORD_SPECS = {
    "swap": {"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]},
    "3cycle": {"cycles": [["walk", "look", "run"]], "output_cycles": [["WALK", "LOOK", "RUN"]]},
    "4cycle": {"cycles": [["walk", "look", "run", "jump"]], "output_cycles": [["WALK", "LOOK", "RUN", "JUMP"]]},
    "two_swaps": {"cycles": [["man", "woman"], ["he", "she"]], "output_cycles": [["MAN", "WOMAN"], ["HE", "SHE"]]},
    "two_3cycles": {"cycles": [["walk", "look", "run"], ["man", "woman", "he"]],
                    "output_cycles": [["WALK", "LOOK", "RUN"], ["MAN", "WOMAN", "HE"]]},
}
