"""Less compute and memory for the same training step: the last encoder layer run only where a loss
reads it, activation checkpointing (--checkpoint-activations / --offload-activations) and
--compile-layers. Each against the plain model on real batches of every understanding objective
(task.get_batch_iterator), built from the command line as fairseq-train builds it: losses and every
gradient the same (losses to 1e-5, gradients to 1e-4; bit for bit with checkpointing, dropout on)."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from .test_attention import _one_batch_per_objective, _step

OBJECTIVES = "xmlm,mmlm,mrm,vlm,ret"  # ret: the dual encoder's text-only and image-only passes too


def _build(data, *flags):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--cpu", "--task", "multitask_multimodal", "--arch", "m3p_tiny",
                                                "--criterion", "m3p_pretrain", "--objectives", OBJECTIVES, *flags])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


@pytest.fixture(scope="module")
def plain(tiny_world):
    """The model computing every position of the last layer, its criterion and a batch of each objective."""
    task, model, criterion = _build(tiny_world["data"], "--full-last-layer")
    return model, criterion, _one_batch_per_objective(task)


def _same_steps(reference, other, criterion, batches, exact=False):
    other.load_state_dict(reference.state_dict())
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-5)
    grad_tol = tol if exact else dict(rtol=1e-4, atol=1e-4)  # fp32 sums over other shapes: rounding
    for objective, sample in batches.items():
        loss_r, grads_r = _step(reference, criterion, sample)
        loss_o, grads_o = _step(other, criterion, sample)
        torch.testing.assert_close(loss_o, loss_r, **tol, msg=f"{objective} loss")
        assert grads_o.keys() == grads_r.keys(), objective
        for name in grads_r:
            torch.testing.assert_close(grads_o[name], grads_r[name], **grad_tol,
                                       msg=lambda m, name=name: f"{objective} grad of {name}: {m}")


def test_last_layer_only_where_read(tiny_world, plain):
    full, criterion, batches = plain
    _, lean, _ = _build(tiny_world["data"])
    _same_steps(full, lean, criterion, batches)

    # what it computed with read_only (as the losses call it): the positions the heads read (masked tokens,
    # masked regions, the first position), nothing else; features_only (feature extraction) every position
    sample = batches["mmlm"]
    net, masked = sample["net_input"], sample["target"].ne(criterion.pad_idx)
    lean.eval()
    full.eval()
    with torch.no_grad():
        num_regions = net["regions"].size(1)
        for kwargs, read in (({"masked_tokens": masked}, lean.encoder.read_positions(net["src_tokens"], num_regions,
                                                                                     masked)),
                             ({"vlm": True}, lean.encoder.read_positions(net["src_tokens"], num_regions, first=True)),
                             ({"features_only": True}, None)):
            ours, theirs = lean(**net, **kwargs, read_only=True)["features"], full(**net, **kwargs)["features"]
            if read is None:
                torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
                continue
            assert lean(**net, **kwargs)["features"].ne(0).any(-1).all(), kwargs  # without read_only: all
            assert 0 < read.sum() < read.numel() / 4
            torch.testing.assert_close(ours[read], theirs[read], rtol=1e-5, atol=1e-5)
            assert not ours[~read].any(), kwargs  # not computed


def test_checkpoint_activations_same_step(tiny_world, plain):
    """fairseq's checkpoint wrapper on every layer (the region embedding under torch's): the same losses
    and gradients bit for bit, dropout on (its draws replayed in the recomputation)."""
    _, criterion, batches = plain
    dropout = ["--dropout", "0.1", "--attention-dropout", "0.1", "--pooler-dropout", "0.1"]
    _, reference, _ = _build(tiny_world["data"], *dropout)
    # every objective checkpointed; offloading (the same wrapper, its inputs kept on the CPU) on one
    for flag, objectives in (("--checkpoint-activations", batches), ("--offload-activations", ["mmlm"])):
        _, model, _ = _build(tiny_world["data"], *dropout, flag)
        layers = model.encoder.sentence_encoder.layers
        assert all(hasattr(layer, "precheckpoint_forward") for layer in layers), flag
        assert model.encoder.checkpoint_regions
        _same_steps(reference, model, criterion, {k: batches[k] for k in objectives}, exact=True)


def test_compile_layers_same_step(tiny_world, plain):
    """--compile-layers puts every encoder layer under torch.compile; the suite traces them with a
    backend that compiles fast (the default, inductor, was run on the same model and batches: the same
    losses to 8e-6, after a first compile of 3.5 minutes on the busy 2-core test machine)."""
    full, criterion, batches = plain
    _, compiled, _ = _build(tiny_world["data"], "--full-last-layer", "--compile-layers", "--compile-backend", "eager")
    assert all(layer._compiled_call_impl is not None for layer in compiled.encoder.sentence_encoder.layers)
    names = list(full.state_dict())
    assert list(compiled.state_dict()) == names  # in place: a checkpoint of either loads into the other
    _same_steps(full, compiled, criterion, {"mmlm": batches["mmlm"]})
