"""Stage `features_images@<dataset>`: feature maps of the pretrained vs the equituned (C4-averaged) backbone for one
test image rotated step by step -> reports/figures/images/features-<dataset>.{png,gif} and their measured
equivariance errors -> metrics/images/features-<dataset>.json. Backbone: the first of images.grid.backbones."""

from __future__ import annotations

from equitune.images.backbones import build_classifier
from equitune.images.data import to_model_input
from equitune.images.features import feature_frames, save_feature_figures
from equitune.images.prepared import load_prepared
from equitune.io import write_json
from equitune.params import load_params
from equitune.seeding import seed_everything
from equitune.stage import StageError, argument_parser, check_in_grid, run_stage


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    all_params = load_params(args.params)
    params = all_params.images
    check_in_grid("dataset", args.dataset, params.grid.datasets)
    figures = params.figures
    data, classes = load_prepared(args.dataset)
    if figures.feature_image_index >= len(data["test_y"]):
        raise StageError(f"images.figures.feature_image_index={figures.feature_image_index} is beyond the "
                         f"{len(data['test_y'])} prepared test images")
    seed_everything(0, all_params.base.threads, all_params.base.deterministic)
    backbone = params.grid.backbones[0]
    classifier = build_classifier(backbone, len(classes), figures.feature_resolution, pretrained=params.train.pretrained)
    image = to_model_input(data["test_x"][figures.feature_image_index:figures.feature_image_index + 1],
                           figures.feature_resolution)
    result = feature_frames(classifier.feature_maps, image, figures.feature_channels)
    stem = f"reports/figures/images/features-{args.dataset}"
    save_feature_figures(result, f"{stem}.png", f"{stem}.gif")
    write_json(f"metrics/images/features-{args.dataset}.json", {
        "backbone": backbone, "image_index": figures.feature_image_index,
        "label": classes[int(data["test_y"][figures.feature_image_index])], "channels": result["channels"],
        **result["errors"],
    })
    print(f"features of {backbone}: {result['errors']}")


if __name__ == "__main__":
    run_stage(main)
