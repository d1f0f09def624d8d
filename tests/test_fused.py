"""Training's autograd wrappers over the compiled kernels agree with plain torch in value and gradient."""
import pytest

torch = pytest.importorskip("torch")

from training import fused  # noqa: E402
from training.losses import identity_terms_reference  # noqa: E402
from training.models import Generator  # noqa: E402


def test_the_extension_is_built_for_training():
    # CI installs the package: the fused path must be the one under test, not the fallback.
    assert fused.kernels() is not None


def test_identity_terms_match_torch_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    f_hr = torch.randn(64, 128, generator=generator) * 10
    f_sr = (f_hr * 0.8 + torch.randn(64, 128, generator=generator) * 5).requires_grad_()
    f_hr[3] = 0  # a zero-norm target row
    weights = torch.rand(2, 64, generator=generator)

    cos_term, magnitude_term = fused.identity_terms_fused(f_sr, f_hr)
    ((weights[0] * cos_term).sum() + (weights[1] * magnitude_term).sum()).backward()
    kernel_grad = f_sr.grad.clone()
    f_sr.grad = None
    cos_reference, magnitude_reference = identity_terms_reference(f_sr, f_hr)
    ((weights[0] * cos_reference).sum() + (weights[1] * magnitude_reference).sum()).backward()

    assert torch.allclose(cos_term, cos_reference, atol=1e-6)
    assert torch.allclose(magnitude_term, magnitude_reference, atol=1e-4)
    assert torch.allclose(kernel_grad, f_sr.grad, atol=1e-6)
    assert cos_term[3].item() == pytest.approx(1.0)


def test_pixel_shuffle_prelu_matches_torch_in_value_and_gradient():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 256, 8, 8, generator=generator, requires_grad=True)
    slope = (torch.rand(64, generator=generator) * 0.5).requires_grad_()
    grad_out = torch.randn(4, 64, 16, 16, generator=generator)

    out = fused.pixel_shuffle_prelu(x, slope, 2)
    out.backward(grad_out)
    grads = x.grad.clone(), slope.grad.clone()
    x.grad = slope.grad = None
    reference = torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(x, 2), slope)
    reference.backward(grad_out)

    assert torch.equal(out, reference)
    assert torch.allclose(grads[0], x.grad, atol=1e-6)
    # a sum over 4·16·16 positions per channel: float32 summation order differs
    assert torch.allclose(grads[1], slope.grad, rtol=1e-4, atol=1e-3)


def test_layouts_the_kernel_does_not_take_fall_back_to_torch():
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    slope = torch.full((4,), 0.25)
    expected = torch.nn.functional.prelu(torch.nn.functional.pixel_shuffle(x, 2), slope)
    assert torch.allclose(fused.pixel_shuffle_prelu(x, slope, 2), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.pixel_shuffle_prelu(x.bfloat16(), slope, 2).dtype == torch.bfloat16


def test_generator_is_the_same_with_and_without_kernels(monkeypatch):
    torch.manual_seed(2)
    generator = Generator().train()
    lr = torch.rand(3, 3, 16, 16)
    with_kernels = generator(lr)
    with_kernels.square().mean().backward()
    grads = [p.grad.clone() for p in generator.parameters()]
    generator.zero_grad()

    monkeypatch.setattr(fused, "_kernel_takes", lambda *tensors: False)
    plain = generator(lr)
    plain.square().mean().backward()
    assert torch.allclose(with_kernels, plain, atol=1e-6)
    for grad, parameter in zip(grads, generator.parameters()):
        assert torch.allclose(grad, parameter.grad, rtol=1e-4, atol=1e-6)
