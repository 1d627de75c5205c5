"""The SCAN grammar (Lake and Baroni 2018): every command and its action sequence, generated exactly.

C -> S and S | S after S | S;  S -> V twice | V thrice | V;
V -> U | U Dir | turn Dir | U opposite Dir | turn opposite Dir | U around Dir | turn around Dir;
U -> walk | look | run | jump;  Dir -> left | right.
34 V phrases, 102 S phrases, 20,910 commands. Actions are written without the official files' ``I_`` prefix.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["ACTION_WORDS", "COMMAND_WORDS", "MAX_COMMAND_WORDS", "all_pairs"]

_VERB_ACTIONS = {"walk": "WALK", "look": "LOOK", "run": "RUN", "jump": "JUMP"}
_TURNS = {"left": "TURN_LEFT", "right": "TURN_RIGHT"}
COMMAND_WORDS = ("walk", "look", "run", "jump", "turn", "left", "right", "opposite", "around",
                 "twice", "thrice", "and", "after")
ACTION_WORDS = ("WALK", "LOOK", "RUN", "JUMP", "TURN_LEFT", "TURN_RIGHT")
MAX_COMMAND_WORDS = 9  # "walk around left thrice and run around right thrice" (tests check it against all_pairs)


def _v_phrases() -> list[tuple[str, tuple[str, ...]]]:
    phrases: list[tuple[str, tuple[str, ...]]] = []
    for verb, action in _VERB_ACTIONS.items():
        phrases.append((verb, (action,)))
    for head in (*_VERB_ACTIONS, "turn"):
        act = () if head == "turn" else (_VERB_ACTIONS[head],)
        for direction, turn in _TURNS.items():
            phrases.append((f"{head} {direction}", (turn, *act)))
            phrases.append((f"{head} opposite {direction}", (turn, turn, *act)))
            phrases.append((f"{head} around {direction}", (turn, *act) * 4))
    return phrases


def _s_phrases() -> list[tuple[str, tuple[str, ...]]]:
    phrases = []
    for text, actions in _v_phrases():
        phrases.append((text, actions))
        phrases.append((f"{text} twice", actions * 2))
        phrases.append((f"{text} thrice", actions * 3))
    return phrases


@lru_cache(maxsize=1)
def all_pairs() -> tuple[tuple[str, str], ...]:
    """All 20,910 (command, actions) pairs, as space-joined strings, in a fixed order."""
    s_phrases = _s_phrases()
    pairs = [(text, " ".join(actions)) for text, actions in s_phrases]
    for first, first_actions in s_phrases:
        for second, second_actions in s_phrases:
            pairs.append((f"{first} and {second}", " ".join(first_actions + second_actions)))
            pairs.append((f"{first} after {second}", " ".join(second_actions + first_actions)))
    return tuple(pairs)

