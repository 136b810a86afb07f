"""The fused batch norm + ReLU (+ add) CPU kernels: numerics against float64, determinism, dispatch."""
import copy
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F

from resnetlab import fused
from resnetlab.blocks import BLOCKS, BasicBlock, PreActBottleneck
from resnetlab.models import ResNet, create_model
from resnetlab.train import use_fused_bn

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the fused kernels cannot be built here", allow_module_level=True)


@pytest.fixture(scope="module")
def ext():
    module = fused.extension()
    assert module is not None, f"the fused extension did not build: {fused.unavailable_reason()}"
    return module


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def reference(x, w, b, s):
    """relu(batch_norm(x) + s) in float64 with autograd: the values and gradients to compare with."""
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    sd = None if s is None else s.double().requires_grad_()
    z = F.batch_norm(xd, None, None, wd, bd, training=True, eps=1e-5)
    y = torch.relu(z if sd is None else z + sd)
    return y, (xd, wd, bd, sd)


@pytest.mark.parametrize("channels,size,with_shortcut", [(16, 32, False), (16, 32, True), (64, 8, True),
                                                         (24, 5, False)])
@pytest.mark.slow  # builds the extension on first use
def test_values_and_gradients_match_float64(ext, channels, size, with_shortcut):
    g = torch.Generator().manual_seed(channels + size)
    # a mean far from zero: the statistics must not lose it to cancellation
    x = cl(torch.randn(32, channels, size, size, generator=g) * 2 + 3)
    s = cl(torch.randn(32, channels, size, size, generator=g)) if with_shortcut else None
    w, b = torch.rand(channels, generator=g) + 0.5, torch.rand(channels, generator=g) - 0.5
    dy = cl(torch.randn(32, channels, size, size, generator=g))

    bn = torch.nn.BatchNorm2d(channels)
    bn.weight.data.copy_(w)
    bn.bias.data.copy_(b)
    xf = x.clone().requires_grad_()
    sf = None if s is None else s.clone().requires_grad_()
    y = fused.batch_norm_relu(bn, xf, sf)
    y.backward(dy)

    y64, (xd, wd, bd, sd) = reference(x, w, b, s)
    y64.backward(dy.double())
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape
    assert (y.double() - y64).abs().max().item() < 2e-5
    assert (xf.grad.double() - xd.grad).abs().max().item() < 2e-5 * xd.grad.abs().max().item()
    assert (bn.weight.grad.double() - wd.grad).abs().max().item() < 1e-4 * wd.grad.abs().max().item()
    assert (bn.bias.grad.double() - bd.grad).abs().max().item() < 1e-4 * bd.grad.abs().max().item()
    if with_shortcut:
        assert torch.equal(sf.grad, dy * (y > 0))  # the add passes the ReLU-masked gradient through
    # running statistics as nn.BatchNorm2d keeps them (momentum 0.1, unbiased variance)
    ref_bn = torch.nn.BatchNorm2d(channels)
    ref_bn(x.double().contiguous().float())
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 1


@pytest.mark.slow  # builds the extension on first use
def test_cumulative_average_when_momentum_is_none(ext):
    x = cl(torch.randn(8, 16, 4, 4, generator=torch.Generator().manual_seed(0)))
    bn, ref_bn = torch.nn.BatchNorm2d(16, momentum=None), torch.nn.BatchNorm2d(16, momentum=None)
    for k in range(3):
        fused.batch_norm_relu(bn, x * (k + 1))
        ref_bn(x * (k + 1))
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3


@pytest.mark.slow  # builds the extension on first use
def test_same_bits_for_any_thread_count(ext):
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x, s, dy = (cl(torch.randn(64, 16, 16, 16, generator=g)) for _ in range(3))
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            bn = torch.nn.BatchNorm2d(16)
            xf = x.clone().requires_grad_()
            sf = s.clone().requires_grad_()
            y = fused.batch_norm_relu(bn, xf, sf)
            y.backward(dy)
            results.append([y, xf.grad, sf.grad, bn.weight.grad, bn.bias.grad, bn.running_var])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("name,options", [("resnet8", {}), ("resnet8", {"shortcut": "none"}),
                                          ("resnet8", {"shortcut": "B", "shortcut_scale": 0.5}),
                                          ("preact-resnet11", {}), ("resnet50", {"width": 4})])
@pytest.mark.slow  # builds the extension on first use
def test_model_gradients_match_float64_as_well_as_eager(ext, one_thread, name, options):
    size = 64 if name == "resnet50" else 16
    model = create_model(name, seed=1, **options)
    fp64 = copy.deepcopy(model).double()
    eager = copy.deepcopy(model).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(eager)
    assert fused.enable(fast) > 0
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, size, size, generator=g)
    y = torch.randint(0, model.num_classes, (16,), generator=g)
    F.cross_entropy(fp64(x.double()), y).backward()
    losses = []
    for m in (eager, fast):
        loss = F.cross_entropy(m(cl(x)), y)
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-4

    def worst(m):
        return max(((p.grad.double() - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12)).item()
                   for p, q in zip(m.parameters(), fp64.parameters()))
    # as close to float64 as PyTorch's own float32 ops are (within a small factor), and close outright
    # (measured: ~2e-6 for the CIFAR nets; ~2e-2 vs eager's ~1e-1 for the bottleneck net, whose last
    # stage normalises 64 values per channel)
    assert worst(fast) < max(2 * worst(eager), 1e-5)
    assert worst(fast) < (1e-4 if size == 16 else 5e-2)
    for (name_b, b), (_, b64) in zip(fast.named_buffers(), fp64.named_buffers()):
        torch.testing.assert_close(b.double(), b64.double(), rtol=1e-4, atol=1e-5, msg=name_b)


@pytest.mark.slow  # builds the extension on first use
def test_steps_aside_for_hooks_eval_and_other_layouts(ext, one_thread):
    model = create_model("resnet8", seed=0).to(memory_format=torch.channels_last)
    fused.enable(model)
    x = cl(torch.randn(4, 3, 16, 16))
    block = model.layer1[0]
    calls = []
    handle = block.bn1.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    model(x)
    assert calls == [torch.Size([4, 16, 16, 16])]  # the hooked BN ran as a module
    handle.remove()
    calls.clear()
    handle = block.add.register_forward_hook(lambda m, i, o: calls.append(len(i)))
    model(x)
    assert calls == [2]  # the add saw branch and shortcut
    handle.remove()
    assert fused.applies(cl(torch.randn(4, 16, 16, 16)), block.bn1, block.relu)
    assert not fused.applies(torch.randn(4, 16, 16, 16), block.bn1, block.relu)  # NCHW
    assert not fused.applies(cl(torch.randn(4, 16, 16, 16)).double(), block.bn1, block.relu)
    model.eval()
    assert not fused.applies(cl(torch.randn(4, 16, 16, 16)), block.bn1, block.relu)
    plain = copy.deepcopy(model)
    fused.enable(plain, False)
    assert torch.equal(model(x), plain(x))  # evaluation uses the module path, bit for bit


def fused_nodes(loss):
    """How many fused-kernel calls the autograd graph of ``loss`` holds (each leaves one backward node)."""
    seen, stack, count = set(), [loss.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += node.name() == "_BatchNormReLUBackward"
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return count


@pytest.mark.slow  # builds the extension on first use
@pytest.mark.parametrize("name,options,norms", [("resnet8", {}, 7), ("resnet8", {"shortcut": "none"}, 7),
                                                ("preact-resnet11", {}, 10), ("resnet50", {"width": 4}, 49)])
def test_enabled_model_runs_every_batch_norm_through_the_kernel(ext, one_thread, name, options, norms):
    model = create_model(name, seed=0, **options).to(memory_format=torch.channels_last)
    assert norms == sum(isinstance(m, torch.nn.BatchNorm2d) and "downsample" not in n
                        for n, m in model.named_modules())  # a projection's BN has no ReLU to fuse with
    size = 64 if name == "resnet50" else 16  # no 1x1 feature map: it would be channels_last as well
    x = cl(torch.randn(2, 3, size, size))
    assert fused_nodes(model(x).sum()) == 0
    fused.enable(model)
    assert fused_nodes(model(x).sum()) == norms
    block = model.layer1[0]
    handle = block.bn1.register_forward_hook(lambda m, i, o: None)
    # the hooked block runs its parent's forward, every other module stays fused
    assert fused_nodes(model(x).sum()) == norms - sum(isinstance(m, torch.nn.BatchNorm2d) for m in block.children())
    handle.remove()
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert fused_nodes(nchw(x.contiguous()).sum()) == 0  # NCHW activations
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_nodes(model(x).sum()) == 0
    fused.disable(model)
    assert fused_nodes(model(x).sum()) == 0


@pytest.mark.slow  # builds the extension on first use
def test_enable_swaps_classes_only(ext, one_thread):
    model = create_model("preact-resnet11", seed=0)
    before = model.state_dict()
    modules = 1 + len(model.blocks())  # the network and each of its blocks
    assert fused.enable(model) == modules
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert type(model) is fused.FusedResNet and isinstance(model, ResNet)
    assert all(type(b) is fused.FusedPreActBottleneck and isinstance(b, PreActBottleneck) for _, b in model.blocks())
    assert fused.is_enabled(model) and fused.is_enabled(copy.deepcopy(model))
    assert fused.is_enabled(pickle.loads(pickle.dumps(model)))
    twin = create_model("preact-resnet11", seed=1)
    twin.load_state_dict(model.state_dict(), strict=True)  # a fused model's checkpoint loads in a plain one
    model.load_state_dict(twin.state_dict(), strict=True)
    assert fused.enable(model) == modules  # enabling twice changes nothing
    assert fused.disable(model) == modules
    assert type(model) is ResNet and not fused.is_enabled(model)
    assert all(type(m) in BLOCKS for _, m in model.blocks())
    block = BasicBlock(16, 16)
    assert fused.enable(block) == 1 and type(block) is fused.FusedBasicBlock  # a block alone works too


def test_train_choice_of_fused_path():
    cpu = torch.device("cpu")
    assert use_fused_bn("auto", cpu, bf16=False, channels_last=True, compiled=False)
    assert not use_fused_bn("auto", cpu, bf16=True, channels_last=True, compiled=False)
    assert not use_fused_bn("auto", cpu, bf16=False, channels_last=False, compiled=False)
    assert not use_fused_bn("auto", cpu, bf16=False, channels_last=True, compiled=True)
    assert not use_fused_bn("off", cpu, bf16=False, channels_last=True, compiled=False)
    assert not use_fused_bn("auto", cpu, bf16=False, channels_last=True, compiled=False, synced=True)
    with pytest.raises(ValueError, match="synced BN True"):  # the kernels see one process's statistics
        use_fused_bn("on", cpu, bf16=False, channels_last=True, compiled=False, synced=True)
    with pytest.raises(ValueError, match="fused-bn on needs CPU training in fp32"):
        use_fused_bn("on", torch.device("cuda"), bf16=True, channels_last=True, compiled=False)
