"""A process that ran a distributed fit destroys its process group before Python shuts down.

Lightning destroys the group at exit only for NCCL (``lightning.fabric.utilities.distributed.
_init_dist_connection`` registers ``_destroy_dist_connection`` with ``atexit`` for ``"nccl"`` only);
a gloo group (DDP on CPU: ``ddp_spawn`` workers, ``ddp`` ranks) stays registered in torch's C++
registry and is left to the interpreter's shutdown. A gloo worker thread (``ProcessGroupGloo::runLoop``)
drops its reference to a finished collective a moment after the caller's ``wait()`` returns; when
that is the last reference to a tensor made in Python (the tensors Lightning all-reduces and
broadcasts every step are), releasing it takes the GIL. If the main thread has begun ``Py_FinalizeEx``
by then, ``take_gil`` ends the thread with ``pthread_exit``, whose forced unwind through the C++
loop calls ``std::terminate``: "terminate called without an active exception" and SIGABRT, after a
run that succeeded. ``destroy_process_group`` shuts the group down and joins those threads while
the interpreter is whole: ``atexit`` handlers run before ``Py_FinalizeEx`` starts finalizing.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerState, TrainerStatus

# The state of the trainer that last set up a distributed run in this process; None: none did.
_last_state: TrainerState | None = None


def _destroy_if_finished() -> None:
    # After a failed run a peer may never join a pending collective: leave the group to the
    # process's exit as before, rather than wait on it.
    if _last_state is not None and _last_state.status == TrainerStatus.FINISHED \
            and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit(trainer: Trainer) -> None:
    """At this process's exit, destroy its default process group (all groups), if the trainer's
    last run finished; a no-op where no group is initialized. Call it where the group is up (a
    callback's ``setup``): in a ``ddp_spawn`` worker that is the worker's own process."""
    global _last_state
    if not (dist.is_available() and dist.is_initialized()):
        return
    if _last_state is None:
        atexit.register(_destroy_if_finished)
    _last_state = trainer.state


class DestroyProcessGroupAtExit(Callback):
    """``destroy_process_group_at_exit`` as a callback, for trainers built in Python."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        destroy_process_group_at_exit(trainer)
