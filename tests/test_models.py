"""Blocks, shortcuts and the model zoo: published parameter counts, shapes, twins, pickling."""
import copy
import inspect
import pickle

import pytest
import torch

import resnetlab
from resnetlab import blocks, models
from resnetlab import (BasicBlock, Bottleneck, NoShortcut, PreActBasicBlock, PreActBottleneck, ProjectionShortcut,
                       ZeroPadShortcut, count_parameters, create_model, list_models)

IMAGENET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                   "resnet101": 44_549_160, "resnet152": 60_192_808}
CIFAR_PARAMS_A = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
                  "resnet110": 1_727_962, "resnet1202": 19_421_274}


def on_meta(name, **options):
    """The architecture ``create_model(name, **options)`` builds, on the meta device: parameters with their
    shapes and no storage, left uninitialised (a count needs no values; seeded init on meta is slower)."""
    with torch.device("meta"):
        return resnetlab.ResNet(resnetlab.get_spec(name), resnetlab.ModelConfig(name, **options))


@pytest.mark.parametrize("name,expected", sorted(IMAGENET_PARAMS.items()))
def test_imagenet_parameter_counts(name, expected):
    assert count_parameters(on_meta(name)) == expected


@pytest.mark.parametrize("name,expected", sorted(CIFAR_PARAMS_A.items()))
def test_cifar_parameter_counts_option_a(name, expected):
    assert count_parameters(on_meta(name)) == expected


def test_shortcut_option_parameter_counts():
    assert count_parameters(on_meta("resnet20", shortcut="B")) == 272_474
    assert count_parameters(on_meta("resnet20", shortcut="C")) == 283_962
    assert count_parameters(on_meta("resnet34", shortcut="A")) == 21_623_848
    assert count_parameters(on_meta("resnet34", shortcut="B")) == 21_797_672
    assert count_parameters(on_meta("resnet34", shortcut="C")) == 22_716_840


def test_option_a_and_none_add_no_parameters():
    for name in ("resnet20", "resnet56", "resnet34", "resnet50"):
        a = on_meta(name, shortcut="A")
        plain = on_meta(name, shortcut="none")
        assert count_parameters(a) == count_parameters(plain)
        assert all(not any(True for _ in b.downsample.parameters()) for _, b in a.blocks())
        assert all(isinstance(b.downsample, NoShortcut) and b.downsample(None) is None for _, b in plain.blocks())
        assert all(b.shortcut_kind == "none" for _, b in plain.blocks())


def test_preact_models(one_thread):  # a forward pass of a deep net: threads would only spin
    m = create_model("preact-resnet164")
    assert m.preact and isinstance(m.layer1[0], PreActBottleneck)
    assert 1.65e6 < count_parameters(m) < 1.75e6  # Identity Mappings, Table 2: 1.7M
    assert 10.1e6 < count_parameters(on_meta("preact-resnet1001")) < 10.4e6  # 10.2M
    assert isinstance(create_model("preact-resnet110").layer2[0], PreActBasicBlock)
    assert create_model("preact-resnet164")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_block_shapes_from_the_issue():
    block = BasicBlock(64, 128, stride=2)
    assert block(torch.randn(2, 64, 32, 32)).shape == (2, 128, 16, 16)
    bottleneck = Bottleneck(64, 32)
    assert bottleneck(torch.randn(2, 64, 32, 32)).shape == (2, 128, 32, 32)
    assert isinstance(bottleneck.downsample, ProjectionShortcut)
    assert bottleneck.shortcut_kind == "projection"


@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck])
@pytest.mark.parametrize("option", ["A", "B", "C", "none"])
def test_every_block_and_option_changes_shape_correctly(cls, option):
    planes = 8
    block = cls(6, planes, stride=2, shortcut=option)
    y = block(torch.randn(3, 6, 9, 9))
    assert y.shape == (3, planes * cls.expansion, 5, 5)
    expected = {"A": "zero-pad", "B": "projection", "C": "projection", "none": "none"}[option]
    assert block.shortcut_kind == expected


def test_identity_where_shapes_match():
    assert BasicBlock(16, 16, shortcut="A").shortcut_kind == "identity"
    assert BasicBlock(16, 16, shortcut="B").shortcut_kind == "identity"
    assert BasicBlock(16, 16, shortcut="C").shortcut_kind == "projection"


def test_zero_pad_conventions():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    split = ZeroPadShortcut(4, 8, stride=2, pad="split")(x)
    end = ZeroPadShortcut(4, 8, stride=2, pad="end")(x)
    sub = x[:, :, ::2, ::2]
    assert split.shape == end.shape == (2, 8, 2, 2)
    assert torch.equal(split[:, 2:6], sub) and split[:, :2].abs().sum() == 0 and split[:, 6:].abs().sum() == 0
    assert torch.equal(end[:, :4], sub) and end[:, 4:].abs().sum() == 0
    model = create_model("resnet20", zero_pad="end")
    assert model.layer2[0].downsample.pad == "end"


def test_stride_placement():
    v15 = create_model("resnet50")
    paper = create_model("resnet50", stride_at="1x1")
    assert v15.layer2[0].conv2.stride == (2, 2) and v15.layer2[0].conv1.stride == (1, 1)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert count_parameters(v15) == count_parameters(paper)


def test_zero_init_residual():
    m = create_model("resnet20", zero_init_residual=True, seed=0)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for _, b in m.blocks())
    assert torch.count_nonzero(m.layer1[0].bn1.weight) > 0
    # With a zero residual branch every block is its shortcut followed by ReLU.
    m.eval()
    block = m.layer1[0]
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_twins_share_initial_weights_bit_for_bit():
    twins = {opt: create_model("resnet20", shortcut=opt, seed=7) for opt in ("A", "B", "C", "none")}
    ref = twins["A"].state_dict()
    for opt, m in twins.items():
        sd = m.state_dict()
        shared = set(sd) & set(ref)
        assert len(shared) == len(ref)  # every A parameter exists in all twins
        for k in shared:
            assert torch.equal(sd[k], ref[k]), (opt, k)
    assert not torch.equal(create_model("resnet20", seed=8).conv1.weight, ref["conv1.weight"])
    torch.manual_seed(3)
    a = create_model("resnet20")
    torch.manual_seed(3)
    b = create_model("resnet20")
    assert torch.equal(a.fc.weight, b.fc.weight)  # without seed=: follows torch.manual_seed


def test_init_statistics():
    m = create_model("resnet56", seed=0)
    w = m.layer3[0].conv2.weight
    expected_std = (2.0 / (64 * 9)) ** 0.5  # He init, fan_out
    assert abs(w.std().item() - expected_std) / expected_std < 0.05


def test_pickle_deepcopy_and_save_load(tmp_path):
    for opt in ("A", "B", "none"):
        m = create_model("resnet8", shortcut=opt, seed=0).eval()
        x = torch.randn(2, 3, 32, 32)
        y = m(x)
        assert torch.equal(copy.deepcopy(m)(x), y)
        assert torch.equal(pickle.loads(pickle.dumps(m))(x), y)
        path = tmp_path / f"m{opt}.pt"
        torch.save(m, path)
        assert torch.equal(torch.load(path, weights_only=False)(x), y)


def test_plain_block_is_its_branch():
    block = BasicBlock(8, 8, shortcut="none").eval()
    assert blocks.shortcut_kind(block) == "none" and block.add(torch.ones(1), None).item() == 1.0
    seen = []
    block.add.register_forward_hook(lambda m, inputs, out: seen.append(inputs))
    x = torch.randn(2, 8, 5, 5)
    branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    assert torch.equal(block(x), torch.relu(branch))
    assert len(seen) == 1 and torch.equal(seen[0][0], branch) and seen[0][1] is None


def test_last_residual_layer():
    post, pre = create_model("resnet8", seed=0), create_model("preact-resnet11", seed=0)
    assert all(b.last_residual_layer() is b.bn2 for _, b in post.blocks())
    assert all(b.last_residual_layer() is b.conv3 for _, b in pre.blocks())
    zeroed = create_model("preact-resnet11", seed=0, zero_init_residual=True)
    assert all(torch.count_nonzero(b.conv3.weight) == 0 < torch.count_nonzero(b.conv2.weight)
               for _, b in zeroed.blocks())


def test_blocks_and_models_know_nothing_of_the_fused_kernels():
    for module in (blocks, models):
        assert "fused" not in inspect.getsource(module).lower(), module.__name__
    for cls in (*blocks.BLOCKS, models.ResNet):
        assert not any("fused" in k for c in cls.__mro__ for k in vars(c)), cls


def test_torch_compile():
    m = create_model("resnet8", width=4, seed=0).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))


# a hook on a NoShortcut is never called (no gradient goes through "no connection"), and PyTorch says so
@pytest.mark.filterwarnings("ignore:For backward hooks to be called")
def test_backward_hooks_work_everywhere():
    """In-place ops would make full backward hooks raise; every block must accept them."""
    for name, kw in (("resnet8", {}), ("resnet8", {"shortcut": "B"}), ("preact-resnet11", {}),
                     ("resnet8", {"shortcut": "none"})):
        m = create_model(name, seed=0, width=4, **kw)
        seen = []
        for mod in m.modules():
            if mod is not m:
                mod.register_full_backward_hook(lambda mod, gi, go: seen.append(type(mod).__name__))
        m(torch.randn(2, 3, 16, 16, requires_grad=True)).sum().backward()
        assert "ReLU" in seen and "Conv2d" in seen
    assert not any(getattr(mod, "inplace", False) for mod in create_model("resnet50").modules())


def test_shortcut_scale():
    m = create_model("resnet8", shortcut_scale=0.5, seed=0)
    assert m.layer1[0].add.scale == 0.5
    branch, shortcut = torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 4.0)
    assert torch.equal(m.layer1[0].add(branch, shortcut), torch.full((1, 2, 2, 2), 3.0))


def test_width_num_classes_in_channels():
    m = create_model("resnet20", width=8, num_classes=100, in_channels=1)
    assert m.layer3[0].conv1.out_channels == 32 and m.fc.out_features == 100
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 100)


def test_registry_lists_and_generic_depths():
    names = list_models()
    for n in list(IMAGENET_PARAMS) + list(CIFAR_PARAMS_A) + ["preact-resnet110", "preact-resnet164"]:
        assert n in names
    assert create_model("resnet8").spec.layers == (1, 1, 1)
    assert create_model("resnet26").spec.depth == 26


@pytest.mark.parametrize("call,match", [
    (lambda: create_model("resnet21"), "6n\\+2"),
    (lambda: create_model("preact-resnet100"), "9n\\+2"),
    (lambda: create_model("vgg16"), "unknown model 'vgg16'.*resnet18"),
    (lambda: create_model("resnet20", shortcut="D"), "unknown shortcut option 'D'; valid: A, B, C, none"),
    (lambda: create_model("resnet20", dropout=0.1), "unknown model option.*dropout.*valid:.*shortcut"),
    (lambda: create_model("resnet50", stride_at="7x7"), "stride_at"),
    (lambda: create_model("resnet20", zero_pad="middle"), "zero_pad"),
    (lambda: create_model("resnet20", num_classes=0), "num_classes"),
    (lambda: create_model("resnet20", width=-1), "width"),
    (lambda: ZeroPadShortcut(32, 16), "cannot reduce channels"),
    (lambda: BasicBlock(16, 0), "positive"),
])
def test_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_public_surface():
    for name in ("create_model", "list_models", "load_weights", "BasicBlock", "Bottleneck"):
        assert hasattr(resnetlab, name)


# --- the transition option: what the shape-changing blocks use ------------------------------------------

def _transition_kinds(model):
    return {n: b.shortcut_kind for n, b in model.blocks() if b.stride != 1 or b.in_channels != b.out_channels}


def test_transition_none_keeps_identities_and_drops_the_shape_changing_shortcuts():
    model = create_model("resnet20", shortcut="A", transition="none", seed=0)
    assert count_parameters(model) == 269_722  # zero-pad shortcuts have no parameters either
    assert _transition_kinds(model) == {"layer2.0": "none", "layer3.0": "none"}
    others = {b.shortcut_kind for n, b in model.blocks() if n not in ("layer2.0", "layer3.0")}
    assert others == {"identity"}
    # and the net really computes something else than option A: the transition blocks add nothing
    a = create_model("resnet20", shortcut="A", seed=0)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name,params", [("resnet20", 272_474), ("resnet50", 25_557_032)])
def test_avgpool_projection_is_resnet_d(name, params):
    model = create_model(name, transition="avgpool-projection", seed=0)
    assert count_parameters(model) == params  # a pool adds no parameters to option B's 1x1 projection
    block = dict(model.blocks())["layer2.0"]
    pool, conv = block.downsample[0], block.downsample[1]
    assert isinstance(pool, torch.nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
    assert conv.stride == (1, 1) and conv.kernel_size == (1, 1)
    # the shortcut of a stride-2 block is the mean of each 2x2 window, then the 1x1 map
    x = torch.randn(1, block.in_channels, 8, 8)
    expected = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), conv.weight)
    assert torch.allclose(conv(pool(x)), expected, atol=1e-6)


def test_transition_checkpoint_round_trip_never_loads_as_option_a(tmp_path):
    from resnetlab.io import atomic_save
    from resnetlab.weights import make_checkpoint, model_from_checkpoint
    model = create_model("resnet8", shortcut="A", transition="none", width=4, seed=1)
    path = tmp_path / "t.pt"
    atomic_save(make_checkpoint(model), path)
    rebuilt, _ = model_from_checkpoint(path)
    assert rebuilt.options.transition == "none" and _transition_kinds(rebuilt) == _transition_kinds(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    # the same keys and shapes as option A: only the recorded architecture can tell them apart
    with pytest.raises(ValueError, match="another architecture.*transition: 'none' in the file, 'zero-pad' here"):
        model_from_checkpoint(path, "resnet8", width=4, shortcut="A")
