"""The backend interface: a registry by name, "auto" as the first backend that can run, and its reasons.

``maskir.codegen.backend`` holds the protocol and the registry; the runtime registers triton, tvm, flex
and reference (``maskir.runtime.backends``) and looks every backend up by name, as ``maskir source`` does.
"""

import pytest
import torch

import maskir
from maskir.cli import main
from maskir.codegen import backend as registry
from maskir.codegen.backend import Backend, Generated, NoBackendError
from maskir.runtime import backends as runtime_backends
from maskir.sim.target import KernelSpec

CPU = KernelSpec.for_cpu(head_dim=32, dtype="fp32", kv_heads=2)
BUILT_IN = ("triton", "tvm", "flex", "reference")


def _qkv(n=32, heads=2, dim=32):
    torch.manual_seed(0)
    return [torch.randn(1, heads, n, dim) for _ in range(3)]


def _compile(backend, head_dim=32, pattern="Causal()"):
    return maskir.compile(
        pattern, 32, heads=2, head_dim=head_dim, dtype=torch.float32, device="cpu", backend=backend, quiet=True
    )


class Echo:
    """A backend that runs the reference's kernels under its own name and generates a one-line text."""

    name = "echo"

    def __init__(self):
        self.reference = registry.get("reference")

    def can_run(self, spec):
        return None

    def generate(self, plan, spec, score_mod=None):
        inner = self.reference.generate(plan, spec, score_mod)
        return Generated(f"# echo of {plan.pattern}\n", inner.tensor_names, inner.static_tensors, {}, inner)

    def load(self, generated, plan, spec, loader):
        return self.reference.load(generated.detail, plan, spec, loader)


@pytest.fixture
def echo():
    backend = registry.register(Echo())
    yield backend
    registry.unregister("echo")


def test_the_four_built_in_backends_are_registered_under_their_names():
    assert set(BUILT_IN) <= set(registry.names())
    for name in BUILT_IN:
        backend = registry.get(name)
        assert isinstance(backend, Backend) and backend.name == name


def test_an_unknown_name_is_a_value_error_listing_the_registered_backends():
    for call in (lambda: registry.get("cuda"), lambda: _compile("cuda")):
        with pytest.raises(ValueError, match="got 'cuda'") as info:
            call()
        assert all(repr(name) in str(info.value) for name in ("auto", *BUILT_IN))


def test_a_registered_backend_is_found_by_name_by_the_runtime_and_the_cli(echo, capsys):
    q, k, v = _qkv()
    compiled = _compile("echo")
    assert compiled.backend == "echo" and compiled.source() == "# echo of Causal()\n"
    expected = maskir.attention(q, k, v, "Causal()", backend="reference")
    torch.testing.assert_close(compiled(q, k, v), expected)
    torch.testing.assert_close(maskir.attention(q, k, v, "Causal()", backend="echo"), expected)
    assert main(["source", "Causal()", "--canvas", "32", "--backend", "echo"]) == 0
    assert capsys.readouterr().out == "# echo of Causal()\n"


def test_register_refuses_a_taken_name_and_things_that_are_not_backends(echo):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(Echo())
    with pytest.raises(TypeError, match="name, can_run, generate and load"):
        registry.register(object())
    renamed = Echo()
    renamed.name = "auto"
    with pytest.raises(ValueError, match="other than 'auto'"):
        registry.register(renamed)


def test_the_cli_source_command_names_the_registered_backends_on_a_bad_one(capsys):
    assert main(["source", "Causal()", "--canvas", "32", "--backend", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--backend must be one of" in err and all(name in err for name in (*BUILT_IN, "tvm-cuda"))
    assert main(["source", "Causal()", "--canvas", "32", "--backend", "reference"]) == 2
    assert "generates no kernel text" in capsys.readouterr().err


def test_each_backend_says_why_it_cannot_run_a_target():
    gpu = KernelSpec.for_arch("sm_89", head_dim=64)
    assert registry.get("tvm").can_run(gpu).startswith("tvm: runs on CPU tensors only")
    assert registry.get("triton").can_run(gpu) is None
    huge = KernelSpec.for_cpu(head_dim=512)
    assert "head_dim must lie in [1, 256]" in registry.get("tvm").can_run(huge)
    assert "head_dim must lie in [16, 256]" in registry.get("triton").can_run(huge)
    assert registry.get("reference").can_run(huge) is None


def test_triton_on_a_cpu_needs_the_interpreter_set_before_triton_was_imported(monkeypatch):
    import triton  # noqa: F401 (imported: the interpreter setting is fixed now)

    assert registry.get("triton").can_run(CPU) is None  # conftest set TRITON_INTERPRET=1 first
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in registry.get("triton").can_run(CPU)


def test_an_explicit_backend_that_cannot_run_is_a_value_error_with_its_reason():
    with pytest.raises(ValueError, match="backend='tvm' cannot run here: tvm: runs on CPU tensors only"):
        runtime_backends.resolve("tvm", KernelSpec.for_arch("sm_90"))


def test_auto_takes_triton_on_cuda_and_tvm_on_a_cpu_where_it_is_installed():
    assert runtime_backends.resolve("auto", KernelSpec.for_arch("sm_90")).name == "triton"
    assert runtime_backends.AUTO_ORDER["cpu"] == ("tvm", "triton", "reference")
    pytest.importorskip("tvm")
    q, k, v = _qkv()
    compiled = _compile("auto")
    assert compiled.backend == "tvm" and "def fwd_0(" in compiled.source()
    torch.testing.assert_close(compiled(q, k, v), maskir.attention(q, k, v, "Causal()", backend="reference"))


def test_auto_falls_through_a_backend_that_cannot_run_the_spec(monkeypatch):
    # head dim 512: neither TVM's nor Triton's kernels take it; the reference does
    assert _compile("auto", head_dim=512).backend == "reference"
    # without apache-tvm a CPU falls back to Triton's interpreter, and TVM says why
    monkeypatch.setattr("maskir.codegen.tvm.backend.tvm_installed", lambda: False)
    assert registry.get("tvm").can_run(CPU) == "tvm: apache-tvm is not installed (pip install 'maskir[tvm]')"
    assert _compile("auto").backend == "triton"


def test_auto_lists_every_backend_with_its_reason_when_none_can_run(monkeypatch):
    for name in registry.names():
        monkeypatch.setattr(registry.get(name), "can_run", lambda spec, name=name: f"{name}: switched off for a test")
    with pytest.raises(NoBackendError) as info:
        _compile("auto")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError) and "backend='auto' found no backend" in message
    for name in registry.names():
        assert f"\n  {name}: switched off for a test" in message
