"""One process of a distributed `randsparse train` for the tests: records what its rank holds, can fail on cue.

Run as ``python tests/train/_ddp_worker.py DUMP_DIR [train arguments]`` under torchrun, or with the
torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) set
by hand. After every epoch each rank writes its masks and weights to ``DUMP_DIR/rank{R}-epoch{E}.pt``.
``RANDSPARSE_TEST_DIE=R:S`` makes rank R kill itself (SIGKILL) right after its optimizer step S;
``RANDSPARSE_TEST_FLIP_MASK=R`` flips one mask bit on rank R before its masks are attached;
``RANDSPARSE_TEST_DUMP_UPDATES=1`` makes every rank write its masks after every sparse-training
update to ``DUMP_DIR/rank{R}-update{S}.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch


def _install_probes(dump: Path, rank: int) -> None:
    import randsparse.train.loop as loop
    from randsparse.sparsity import MaskSet, masks_from_model

    finish_epoch = loop._finish_epoch

    def finish_and_dump(run: Any, epoch: int, *args: Any) -> None:
        finish_epoch(run, epoch, *args)
        masks = {name: mask.clone() for name, mask in masks_from_model(run.model).items()}
        torch.save({"masks": masks, "model": run.model.state_dict()}, dump / f"rank{rank}-epoch{epoch + 1}.pt")

    loop._finish_epoch = finish_and_dump

    die = os.environ.get("RANDSPARSE_TEST_DIE")
    if die and int(die.split(":")[0]) == rank:
        last_step = int(die.split(":")[1])
        build_optimizer = loop.build_optimizer

        def build_and_arm(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
            optimizer = build_optimizer(*args, **kwargs)
            steps = [0]

            def count(*_: Any) -> None:
                steps[0] += 1
                if steps[0] == last_step:
                    os.kill(os.getpid(), signal.SIGKILL)

            optimizer.register_step_post_hook(count)
            return optimizer

        loop.build_optimizer = build_and_arm

    if os.environ.get("RANDSPARSE_TEST_FLIP_MASK") == str(rank):
        import randsparse.train.dynamic as dynamic

        attach = dynamic.attach

        def flip_and_attach(model: Any, masks: MaskSet, *args: Any) -> Any:
            changed = {name: mask.clone() for name, mask in masks.items()}
            first = next(iter(changed))
            changed[first].view(-1)[0] = ~changed[first].view(-1)[0]
            return attach(model, MaskSet(changed), *args)

        dynamic.attach = flip_and_attach

    if os.environ.get("RANDSPARSE_TEST_DUMP_UPDATES"):
        import randsparse.train.dynamic as dynamic

        update = dynamic.SparseTraining._update

        def update_and_dump(self: Any, step: int) -> None:
            update(self, step)
            masks = {name: mask.clone() for name, mask in self.handle.masks.items()}
            torch.save({"masks": masks}, dump / f"rank{rank}-update{step}.pt")

        dynamic.SparseTraining._update = update_and_dump


def main() -> int:
    dump = Path(sys.argv[1])
    _install_probes(dump, int(os.environ.get("RANK", "0")))
    from randsparse.cli import main as cli_main

    return cli_main(["train", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
