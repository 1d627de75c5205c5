"""Stage `prompts_nlg`: check the word lists against the tokenizer and write the tokenised prompts.

Writes data/nlg/prompts.json: per axis, the equality/general/neutral token ids (with every word form that was
not usable listed), and every prompt with its token ids. Bad word lists and prompts that are not exact group
images of each other stop the stage with exit code 2 before anything is written.
"""

from __future__ import annotations

from equitune.io import write_json
from equitune.nlg.lm import load_tokenizer
from equitune.nlg.prompts import build_prompts, check_prompts_are_group_images
from equitune.nlg.words import WordListError, bind_axis, load_word_lists
from equitune.params import load_params
from equitune.stage import argument_parser, run_stage

OUTPUT = "data/nlg/prompts.json"


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--output", default=OUTPUT)
    args = parser.parse_args(argv)
    nlg = load_params(args.params).nlg
    word_lists = load_word_lists(nlg.word_lists)
    tokenizer = load_tokenizer(nlg.model)
    prompts = build_prompts(nlg)
    axes = {}
    for axis, spec in nlg.axes.items():
        words = bind_axis(word_lists, spec.words, tokenizer)
        if words.order != len(spec.demographics):
            raise WordListError(f"axis {axis!r}: {len(spec.demographics)} demographics in params but the equality "
                                f"sets of word list {spec.words!r} have {words.order} words")
        axis_prompts = [p for p in prompts if p.axis == axis]
        token_ids = [tokenizer(p.text).input_ids for p in axis_prompts]
        # The permutation only needs to cover the tokenizer's ids here; the model's vocabulary is checked later.
        vocab_size = max(len(tokenizer), 1 + max(i for ids in token_ids for i in ids))
        check_prompts_are_group_images(axis_prompts, token_ids, words.permutation(vocab_size), tokenizer)
        axes[axis] = {
            "words": words.to_json(),
            "prompts": [{**p.to_json(), "token_ids": ids} for p, ids in zip(axis_prompts, token_ids, strict=False)],
        }
        for line in words.skipped_forms:
            print(f"[{axis}] word form not used: {line}")
    write_json(args.output, {"model": nlg.model, "pad_id": tokenizer.pad_token_id, "axes": axes})
    print(f"wrote {len(prompts)} prompts for {len(axes)} axes to {args.output}")


if __name__ == "__main__":
    run_stage(main)
