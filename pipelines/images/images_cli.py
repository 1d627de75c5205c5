"""Shared argument parsing of the image stages: the params file and one grid cell."""

from __future__ import annotations

from equitune.images.cells import Cell
from equitune.stage import argument_parser


def cell_parser(description: str):
    parser = argument_parser(description)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--seed", required=True, type=int)
    return parser


def cell_from(args) -> Cell:
    return Cell(args.dataset, args.backbone, args.method, args.group, args.seed)
