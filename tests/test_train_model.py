"""model.network: torchvision r2plus1d_18 names and shapes, loading published-style state dicts."""

import pytest
import torch

from echocmr.model.config import ModelConfig
from echocmr.model.network import R2Plus1D, build_model, count_parameters, load_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# torchvision's R2Plus1D_18_Weights.KINETICS400_V1 reports this many parameters (400 classes).
TORCHVISION_R2PLUS1D_18_PARAMS = 31_505_325


def torchvision_r2plus1d_18_shapes(num_classes: int = 400, in_channels: int = 3) -> dict:
    """Name -> shape of every state-dict entry of torchvision's ``r2plus1d_18``, written from the
    architecture's definition (torchvision/models/video/resnet.py: VideoResNet with BasicBlock,
    Conv2Plus1D, R2Plus1dStem, layers [2, 2, 2, 2]) without using model.network."""
    shapes = {}

    def conv(name, c_out, c_in, kernel):
        shapes[f"{name}.weight"] = (c_out, c_in, *kernel)

    def bn(name, c):
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{part}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("stem.0", 45, in_channels, (1, 7, 7))
    bn("stem.1", 45)
    conv("stem.3", 64, 45, (3, 1, 1))
    bn("stem.4", 64)
    inplanes = 64
    for layer, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for block in range(2):
            block_in = inplanes if block == 0 else planes
            mid = (block_in * planes * 27) // (block_in * 9 + 3 * planes)
            for conv_name, c_in in (("conv1", block_in), ("conv2", planes)):
                prefix = f"layer{layer}.{block}.{conv_name}"
                conv(f"{prefix}.0.0", mid, c_in, (1, 3, 3))
                bn(f"{prefix}.0.1", mid)
                conv(f"{prefix}.0.3", planes, mid, (3, 1, 1))
                bn(f"{prefix}.1", planes)
            if block == 0 and (stride != 1 or inplanes != planes):
                conv(f"layer{layer}.0.downsample.0", planes, inplanes, (1, 1, 1))
                bn(f"layer{layer}.0.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def fake_published_state(num_classes=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in torchvision_r2plus1d_18_shapes(num_classes).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_names_and_shapes_equal_torchvision():
    reference = torchvision_r2plus1d_18_shapes(num_classes=5, in_channels=3)
    model = R2Plus1D(ModelConfig(in_channels=3))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference
    head = 512 * 5 + 5
    assert count_parameters(model) - head + 512 * 400 + 400 == TORCHVISION_R2PLUS1D_18_PARAMS


def test_published_state_dict_loads_into_grey_model(tmp_path):
    state = fake_published_state()
    path = tmp_path / "r2plus1d_18_kinetics.pt"
    torch.save(state, path)
    grey = build_model(ModelConfig(init=str(path)))  # in_channels=1
    rgb = R2Plus1D(ModelConfig(in_channels=3))
    report = load_pretrained(rgb, str(path))
    assert report.shape_mismatch == ["fc.weight: file (400, 512) vs model (5, 512)",
                                     "fc.bias: file (400,) vs model (5,)"]
    assert not report.unexpected and not report.summed_input_channels
    assert "fc.weight" in report.missing or "fc.weight" not in report.loaded
    for name, value in state.items():
        if name.startswith("fc."):
            continue
        ours = grey.state_dict()[name]
        expected = value.sum(1, keepdim=True) if name == "stem.0.weight" else value
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # grey clip through the summed stem == the same clip on three channels through RGB weights
    grey.eval()
    rgb.eval()
    clip = torch.rand(1, 1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grey.features(clip), rgb.features(clip.repeat(1, 3, 1, 1, 1)),
                                   rtol=1e-4, atol=1e-5)


def test_dataparallel_prefix_and_matching_head_load():
    # EchoNet-Dynamic saves a DataParallel ("module.") state dict; here with a 5-output head.
    state = {f"module.{k}": v for k, v in fake_published_state(num_classes=5).items()}
    model = R2Plus1D(ModelConfig(in_channels=3))
    report = load_pretrained(model, state)
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    torch.testing.assert_close(model.fc.weight, state["module.fc.weight"], rtol=0, atol=0)


def test_wrong_architecture_is_a_clear_error():
    small = R2Plus1D(ModelConfig(width=16))
    with pytest.raises(ValueError, match="model.width/model.layers must match"):
        load_pretrained(small, fake_published_state())
    extra = {**R2Plus1D(ModelConfig(width=8)).state_dict(), "head2.weight": torch.zeros(3)}
    report = load_pretrained(R2Plus1D(ModelConfig(width=8)), extra)
    assert report.unexpected == ["head2.weight"]
    assert "unexpected (ignored): head2.weight" in report.describe()


def test_missing_or_foreign_init_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--init file"):
        build_model(ModelConfig(init=str(tmp_path / "nope.pt")))
    bad = tmp_path / "bad.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(ValueError, match="no mapping of parameter names"):
        build_model(ModelConfig(init=str(bad)))


def test_small_model_shapes_and_gradients():
    model = R2Plus1D(ModelConfig(width=4, layers=(1, 1, 1, 1)))
    out = model(torch.randn(2, 1, 8, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("prefix", ["module.m.", "m.module.", "m.", "module.module."])
def test_the_published_echo_cmr_release_format_loads(tmp_path, prefix):
    """The echo-CMR study's checkpoints nest the network as ``m`` inside a DataParallel wrapper
    (``module.m.stem.0.weight``), saved under ``state_dict``; its head has five outputs."""
    state = fake_published_state(num_classes=5)
    path = tmp_path / "echo_cmr_release.pt"
    torch.save({"epoch": 44, "state_dict": {f"{prefix}{k}": v for k, v in state.items()}}, path)
    model = build_model(ModelConfig(init=str(path)))  # grey: the RGB stem is summed
    report = load_pretrained(R2Plus1D(ModelConfig(in_channels=3)), str(path))
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    torch.testing.assert_close(model.fc.weight, state["fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.stem[0].weight, state["stem.0.weight"].sum(1, keepdim=True),
                               rtol=0, atol=0)


def test_torchvision_kinetics_state_dict_loads_as_init(tmp_path):
    """torchvision's ``r2plus1d_18`` Kinetics-400 file: bare names, 3-channel stem, 400 classes."""
    path = tmp_path / "r2plus1d_18-91a641e6.pth"
    torch.save(fake_published_state(num_classes=400), path)
    report = load_pretrained(R2Plus1D(ModelConfig()), str(path))
    assert report.summed_input_channels and not report.unexpected
    assert [m.split(":")[0] for m in report.shape_mismatch] == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == len(R2Plus1D(ModelConfig()).state_dict()) - 2
