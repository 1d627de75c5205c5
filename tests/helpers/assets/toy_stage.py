"""A toy DVC stage for the infrastructure tests: it learns nothing, but behaves like a real stage.

It validates its params section (`toy:` in params.yaml) before doing anything, opens a tracked MLflow run,
writes a checkpoint each epoch through `equitune.pipeline.io.atomic_path` (slowly, in two halves, so that a test can
kill it mid-write), logs per-epoch metrics, and writes its DVC metrics file last. Like a real training stage it can
also write its per-epoch curve (``--curve``, a DVC plots file), draw a figure logged as an artifact (``--figure``)
and tag its run with the checkpoint's DVC hash. ``--seed``, ``--out`` and ``--metrics`` make it a grid cell (a
matrix stage's command).

When TOY_PROGRESS names a file, one line per event is appended to it ("pid N", "writing E", "epoch E"), so a
test knows when to kill it. When TOY_GATE names a file, the stage waits (up to 300 s) for it to exist before its
first epoch, so a test can hold several stages open at once.
"""

from __future__ import annotations

import os
import time

import yaml
from pydantic import Field, ValidationError

from equitune.pipeline.curves import Curve
from equitune.pipeline.io import atomic_path, write_json
from equitune.pipeline.schema import ParamsError, StrictModel, format_validation_error
from equitune.pipeline.stage import argument_parser, run_stage
from equitune.pipeline.tracking import tracked_run


class ToyParams(StrictModel):
    seed: int
    epochs: int = Field(ge=1)
    epoch_seconds: float = Field(ge=0)
    fail_at_epoch: int | None = None


def progress(event: str) -> None:
    if os.environ.get("TOY_PROGRESS"):
        with open(os.environ["TOY_PROGRESS"], "a") as stream:
            stream.write(event + "\n")


def wait_for_gate(timeout: float = 300.0) -> None:
    gate = os.environ.get("TOY_GATE")
    deadline = time.monotonic() + timeout
    while gate and not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError(f"TOY_GATE {gate} did not open within {timeout:.0f} s")
        time.sleep(0.2)


def draw_losses(losses: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(4, 3))
    axes.plot(range(len(losses)), losses, marker="o")
    axes.set(xlabel="epoch", ylabel="loss", title="toy loss")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(figure)


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--seed", type=int, help="a grid cell's seed (default: toy.seed)")
    parser.add_argument("--out", default="outputs/model.ckpt")
    parser.add_argument("--metrics", default="metrics/toy.json")
    parser.add_argument("--curve", help="the per-epoch curve (CSV)")
    parser.add_argument("--figure", help="a PNG of the loss, logged as an artifact")
    args = parser.parse_args(argv)
    data = yaml.safe_load(open(args.params))
    try:
        params = ToyParams.model_validate(data.get("toy"))
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, args.params, ToyParams)) from None
    if args.seed is not None:
        params = params.model_copy(update={"seed": args.seed})

    tags = {"model": "toy-mlp", "method": "equitune", "group": "c4", "seed": params.seed}
    curve = Curve(args.curve, x="epoch", y=("loss",)) if args.curve else None
    with tracked_run("toy", profile="default", params=params, tags=tags, curve=curve) as run:
        progress(f"pid {os.getpid()}")
        wait_for_gate()
        loss, losses = 1.0, []
        for epoch in range(params.epochs):
            if params.fail_at_epoch == epoch:
                raise RuntimeError(f"toy failure at epoch {epoch}")
            loss = round(1.0 / (epoch + 2) + params.seed * 1e-3, 6)
            with atomic_path(args.out) as tmp:
                with open(tmp, "w") as stream:
                    stream.write(f"epoch {epoch} first half\n")
                    stream.flush()
                    progress(f"writing {epoch}")
                    time.sleep(params.epoch_seconds)
                    stream.write(f"epoch {epoch} second half, loss {loss}\n")
            run.log_metrics({"loss": loss, "lr": 0.1}, step=epoch)
            losses.append(loss)
            progress(f"epoch {epoch}")
        run.reference_output(args.out)
        if args.figure:
            draw_losses(losses, args.figure)
            run.log_artifact(args.figure, "figures")
        final = {"loss": loss, "test": {"accuracy": round(0.5 + params.seed * 1e-3, 6)}, "epochs": params.epochs}
        run.log_final(final)
    write_json(args.metrics, final)


if __name__ == "__main__":
    run_stage(main)
