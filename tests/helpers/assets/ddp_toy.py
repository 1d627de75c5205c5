"""A toy data-parallel training stage for the distributed tests: an EquiTune-wrapped CNN, trained the way a real
stage trains under torchrun (equitune.pipeline.distributed), small enough for 2 CPU processes.

Run it as one process (``python ddp_toy.py ...``) or as several (``torchrun --standalone --nproc_per_node=2
ddp_toy.py ...``): with the same global batch and seed both take the same steps (every rank draws the same seeded
global batches and trains on its ``DistributedContext.local_share`` of each, as the stages do). Rank 0 alone opens
the MLflow run, writes the weights (``--out``) and the metrics file (``--metrics``); every rank checks that the
replicas still hold identical weights after training, then predicts the training images split across the ranks and
gathered.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from equitune.core import EquiTune, image_action
from equitune.pipeline.distributed import DistributedContext, distributed, tracked_run_on_main
from equitune.pipeline.io import atomic_path, write_json
from equitune.pipeline.schema import load_section
from equitune.pipeline.seeding import seed_everything
from equitune.pipeline.stage import argument_parser, run_stage

NUM_EXAMPLES, SIZE, CLASSES = 48, 6, 3


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed synthetic images and labels (their own generator: the same on every rank and in every run)."""
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(NUM_EXAMPLES, 1, SIZE, SIZE, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (NUM_EXAMPLES,), generator=generator)
    return images, labels


def toy_model() -> nn.Module:
    """A small CNN that is not rotation invariant by itself, wrapped by EquiTune over C4 (invariant)."""
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * (SIZE - 2) ** 2, CLASSES))
    return EquiTune(backbone.double(), image_action("c4"))


def global_batches(seed: int, epoch: int, batch_size: int) -> list[torch.Tensor]:
    """One epoch's seeded order of global batches (the same on every rank)."""
    order = torch.randperm(NUM_EXAMPLES, generator=torch.Generator().manual_seed(seed + epoch))
    return list(order.split(batch_size))


def replicas_agree(context: DistributedContext, tensor: torch.Tensor) -> bool:
    """Whether every rank holds exactly this tensor (the replicas did not drift apart)."""
    if not context.is_distributed:
        return True
    low, high = tensor.detach().reshape(-1).clone(), tensor.detach().reshape(-1).clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size (all ranks together)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", required=True, help="weights of the trained model (rank 0 writes it)")
    parser.add_argument("--metrics", required=True, help="metrics file (rank 0 writes it)")
    args = parser.parse_args(argv)
    base = load_section(args.params, None, None).base

    with distributed(base) as context:
        seed_everything(args.seed, threads=1, deterministic=base.deterministic)
        images, labels = toy_data()
        context.check_batches(args.batch_size, NUM_EXAMPLES, what="--batch-size")
        model = context.wrap(toy_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tags = {"model": "toy-cnn", "method": "equitune", "group": "c4", "seed": args.seed}
        params = {"seed": args.seed, "batch_size": args.batch_size, "epochs": args.epochs}
        with tracked_run_on_main(context, "toy", profile="default", params=params, tags=tags) as run:
            step = 0
            for epoch in range(args.epochs):
                for batch in global_batches(args.seed, epoch, args.batch_size):
                    indices, weight = context.local_share(batch)
                    loss = weight * nn.functional.cross_entropy(model(images[indices].to(context.device)),
                                                                labels[indices].to(context.device))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    run.log_metrics({"loss": context.mean(loss)}, step=step)
                    step += 1
            weights = nn.utils.parameters_to_vector(model.parameters())
            if not replicas_agree(context, weights):
                raise RuntimeError("the replicas' weights differ after training")
            # Inference split across ranks and gathered back in order (how generation shares its prompts).
            model.eval()
            with torch.no_grad():
                mine = [model(image[None].to(context.device)).argmax(-1).item() for image in context.shard(images)]
            predictions = context.gather(mine)
            final = {"steps": step, "world_size": context.world_size, "predictions": predictions}
            run.log_final({"steps": step})
        if context.is_main:
            state = getattr(model, "module", model).state_dict()
            with atomic_path(args.out) as tmp:
                torch.save(state, tmp)
            write_json(args.metrics, final)


if __name__ == "__main__":
    run_stage(main)
