"""Stand-ins for what MindSpore builds only on Ascend, keeping MindSpore's own contracts, so that the training
code Ascend runs is run on CPU.

- `loss_scaling_train_step`: what `ms.amp.build_train_network` builds for a dynamic loss scale on Ascend,
  `nn.TrainOneStepWithLossScaleCell` with a `DynamicLossScaleUpdateCell`, returning `(loss, overflow, scale)`
  and skipping the optimizer on an overflowed step. MindSpore's cell itself, with one method changed: CPU has
  no NPUGetFloatStatusV2, so the overflow is detected the way a 910B does in its INFNAN mode (IsFinite on every
  gradient: `_get_distributed_overflow_status_on_infnan_mode(_ascend_grad_overflow, …)`, loss_scale.py).
- `SunkModel`: `mindspore.train.Model` whose sink mode (`dataset_sink_mode=True`, Ascend/GPU only) is played on
  the host with MindSpore's contract (`Model._train_dataset_sink_process`, model.py): `epoch` counts sinks of
  `sink_size` steps, the dataset runs on across them, each sink calls the step callbacks ONCE with
  `cur_step_num` advanced by `sink_size` and `net_outputs` of the sink's last step, the epoch callbacks
  once per sink, and a stop request is honoured at the sink's end.
Graphs compiled are counted by `bench.compiles.count_compiles`.
"""

from __future__ import annotations


def loss_scaling_train_step(network, optimizer, loss_fn, train):
    """`nn.TrainOneStepWithLossScaleCell` over `network` + `loss_fn` cast by amp at `train.amp_level` (MindSpore's
    own casting: `build_train_network` without a manager, whose `.network` we take), with MindSpore's dynamic
    update cell (`DynamicLossScaleManager(train.loss_scale, 2, window).get_update_cell()`, as amp builds it)."""
    import mindspore as ms
    from mindspore import nn
    from mindspore.nn.wrap import loss_scale

    from sknet.training.runtime import loss_scaling

    class InfNanLossScaleCell(nn.TrainOneStepWithLossScaleCell):
        def get_overflow_status(self, status, compute_output):
            return self._get_distributed_overflow_status_on_infnan_mode(loss_scale._ascend_grad_overflow,
                                                                        compute_output)

    manager, optimizer_scale = loss_scaling(train)
    assert optimizer_scale == 1.0, "a dynamic loss scale: the cell unscales, the optimizer must not"
    with_loss = ms.amp.build_train_network(network, optimizer, loss_fn, level=train.amp_level,
                                           loss_scale_manager=ms.FixedLossScaleManager(1.0, False)).network
    return InfNanLossScaleCell(with_loss, optimizer, scale_sense=manager.get_update_cell()).set_train()


def sunk_model_class():
    """`SunkModel` (see the module docstring); built lazily so that importing this module stays cheap."""
    from mindspore.train import Model
    from mindspore.train.callback import RunContext, _InternalCallbackParam

    class SunkModel(Model):
        def train(self, epoch, train_dataset, callbacks=None, dataset_sink_mode=False, sink_size=-1,
                  initial_epoch=0):
            if not dataset_sink_mode:
                return super().train(epoch, train_dataset, callbacks, dataset_sink_mode, sink_size, initial_epoch)
            params = _InternalCallbackParam()
            params.cur_step_num, params.batch_num, params.epoch_num = 0, sink_size, epoch - initial_epoch
            params.train_network, params.dataset_sink_mode = self.train_network, True
            run_context = RunContext(params)
            dataset_epochs = -(-epoch * sink_size // train_dataset.get_dataset_size())  # as MindSpore sends
            batches = _across_epochs(train_dataset.create_tuple_iterator(num_epochs=dataset_epochs))
            for cb in callbacks:
                cb.on_train_begin(run_context)
            for sink in range(initial_epoch, epoch):
                params.cur_epoch_num = sink + 1
                for cb in callbacks:
                    cb.on_train_epoch_begin(run_context)
                for _ in range(sink_size):
                    params.net_outputs = self.train_network(*next(batches))
                params.cur_step_num += sink_size  # graph mode: += dataset_helper.sink_size()
                for cb in callbacks:
                    cb.on_train_step_end(run_context)
                for cb in callbacks:
                    cb.on_train_epoch_end(run_context)
                if run_context.get_stop_requested():
                    break
            for cb in callbacks:
                cb.on_train_end(run_context)

    return SunkModel


def _with_sink(admission, sink: int):
    """`admission` with its step plan's sink forced to `sink` (the cadence moved onto its boundaries), as the plan
    of an Ascend run with that sink would be: the CPU rank keeps its own plan otherwise."""
    import dataclasses

    from sknet.training.steps import on_boundary

    steps = admission.steps
    every = steps.checkpoint_every_steps
    steps = dataclasses.replace(steps, sink_size=sink, log_every_steps=on_boundary(steps.log_every_steps, sink),
                                checkpoint_every_steps=on_boundary(every, sink) if every else 0)
    return dataclasses.replace(admission, steps=steps)


def _across_epochs(iterator):
    """The batches of a MindSpore dataset iterator as one stream (it ends each epoch with StopIteration, as the
    device queue of a sink does not)."""
    while True:
        yield from iterator


def train_with_standins(overrides: list[str], *, stop_after_steps: int | None = None, sink: int | None = None,
                        loss_scaling: bool = False) -> dict:
    """`sknet.training.loop.train` on cpu-smoke + `overrides`, with MindSpore's Ascend-only parts stood in for:
    `sink` runs the loop in sink mode (`SunkModel`, `sink` steps per sink), `loss_scaling` trains with a dynamic
    loss scale through the loss-scaling cell. The result, and the graphs compiled (by Cell class)."""
    import dataclasses

    import mindspore.train

    import sknet.training.loop as loop
    from bench.compiles import count_compiles
    from sknet.config import load_config

    cfg = load_config("cpu-smoke", overrides)
    if loss_scaling:  # load_config refuses it on CPU, where MindSpore cannot build the real cell
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss_scale_mode="dynamic"))
        loop.build_train_step = loss_scaling_train_step
    if sink is not None:
        admit = loop.admit
        loop.admit = lambda *args, **kwargs: _with_sink(admit(*args, **kwargs), sink)
        mindspore.train.Model = sunk_model_class()
    with count_compiles() as compiled:
        try:
            result = loop.train(cfg, stop_after_steps=stop_after_steps).to_dict()
        except loop.Preempted as stopped:
            result = {"preempted_at": stopped.step}
    return {"result": result, "compiles": dict(compiled)}


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.compiles
    print(json.dumps(train_with_standins(**json.loads(sys.argv[1]))))
