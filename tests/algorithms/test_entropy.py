import doctest
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rlvr.algorithms.entropy as entropy_module
from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.entropy import ENTROPY_TENSOR_ARGS, entropy_from_logits, entropy_loss, token_logprobs
from rlvr.errors import ConfigError, ShapeError

F64 = torch.float64
B, T, V = 3, 5, 11
# Chunk sizes below, equal to and above T = 5, dividing and not dividing B * T = 15.
CHUNK_SIZES = [1, 2, 4, 5, 7, 10, 15, 1000]


def naive_entropy(logits, temperature=1.0):
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)


def naive_logprobs(logits, ids, temperature=1.0):
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return torch.log_softmax(z, -1).gather(-1, ids[..., None]).squeeze(-1)


def _inputs(seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g, dtype=F64)).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    upstream = torch.randn(B, T, generator=g, dtype=F64)  # weights of a downstream loss
    return logits, ids, upstream


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_entropy_and_its_gradient_equal_the_naive_computation(chunk_size, temperature):
    logits, _, upstream = _inputs()
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    chunked = entropy_from_logits(x1, temperature=temperature, chunk_size=chunk_size)
    naive = naive_entropy(x2, temperature)
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-13)
    (chunked * upstream).sum().backward()
    (naive * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-13)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_token_logprobs_equal_log_softmax_of_logits_over_temperature(chunk_size, temperature):
    logits, ids, upstream = _inputs(1)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    chunked = token_logprobs(x1, ids, temperature=temperature, chunk_size=chunk_size)
    naive = torch.log_softmax(x2 / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-13)
    (chunked * upstream).sum().backward()
    (naive * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-13)


def test_hand_values():
    # Uniform over 4 tokens: H = log 4. Logits (0, 0, 2) at T = 2: z = (0, 0, 1), p_2 = e / (2 + e).
    assert entropy_from_logits(torch.zeros(1, 1, 4, dtype=F64)).item() == pytest.approx(
        math.log(4), abs=1e-15
    )
    lp = token_logprobs(torch.tensor([[[0.0, 0.0, 2.0]]], dtype=F64), torch.tensor([[2]]), temperature=2.0)
    assert lp.item() == pytest.approx(1 - math.log(2 + math.e), abs=1e-15)
    # A peaked distribution at temperature 0.5 is sharper: its entropy drops.
    x = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=F64)
    assert entropy_from_logits(x, temperature=0.5).item() < entropy_from_logits(x).item()


def test_gradcheck_of_the_hand_written_backward_passes():
    logits, ids, _ = _inputs(2)
    x = logits[:2, :3, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, temperature=0.7, chunk_size=2), (x,))
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, ids[:2, :3] % 4, temperature=0.7, chunk_size=2), (x,)
    )


def test_non_contiguous_logits_such_as_a_shifted_slice():
    logits, ids, upstream = _inputs(3)
    wide = torch.randn(B, T + 1, V, dtype=F64)
    wide[:, :-1] = logits
    x = wide.clone().requires_grad_(True)
    shifted = x[:, :-1]  # what a caller passes after aligning logits with the next token
    assert not shifted.is_contiguous()
    out = token_logprobs(shifted, ids, chunk_size=4) + entropy_from_logits(shifted, chunk_size=4)
    torch.testing.assert_close(out, naive_logprobs(logits, ids) + naive_entropy(logits), rtol=0, atol=1e-13)
    (out * upstream).sum().backward()
    assert (x.grad[:, -1] == 0).all()  # the last position was not used


def test_bf16_input_is_upcast_per_chunk_outputs_float32_grad_bf16():
    logits, ids, upstream = _inputs(4, dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    ent = entropy_from_logits(x, chunk_size=4)
    lp = token_logprobs(x, ids, chunk_size=4)
    assert ent.dtype == lp.dtype == torch.float32
    # Same as computing on the float32 copy of the bf16 values.
    torch.testing.assert_close(ent, naive_entropy(logits.float()), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(lp, naive_logprobs(logits.float(), ids), rtol=1e-6, atol=1e-5)
    ((ent + lp) * upstream.float()).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    ref = logits.float().requires_grad_(True)
    ((naive_entropy(ref) + naive_logprobs(ref, ids)) * upstream.float()).sum().backward()
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=1e-2, atol=1e-2)


def _saved_tensor_numels(fn, logits):
    """numel of every tensor autograd saves for backward while running fn, except logits itself."""
    saved = []

    def pack(t):
        if t.data_ptr() != logits.data_ptr():
            saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


def test_backward_keeps_no_float32_copy_of_the_logits():
    logits, ids, _ = _inputs(5, dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    for fn in (lambda: entropy_from_logits(x, chunk_size=4), lambda: token_logprobs(x, ids, chunk_size=4)):
        assert max(_saved_tensor_numels(fn, x)) <= B * T  # a few [B, T] vectors, never [B, T, V]
    # The check can fail: the naive computation saves [B, T, V] float32 tensors.
    assert max(_saved_tensor_numels(lambda: naive_entropy(x), x)) == B * T * V


def test_no_grad_and_empty_batches():
    logits, ids, _ = _inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(entropy_from_logits(logits, chunk_size=3), naive_entropy(logits))
    assert entropy_from_logits(torch.zeros(0, T, V)).shape == (0, T)
    assert token_logprobs(torch.zeros(B, 0, V), torch.zeros(B, 0, dtype=torch.long)).shape == (B, 0)


def test_entropy_loss_aggregates_response_tokens_only():
    entropy = torch.tensor([[1.0, 2.0, math.nan], [3.0, math.inf, -math.inf]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = entropy_loss(entropy=entropy, mask=mask)
    assert out.loss.item() == pytest.approx((1 + 2 + 3) / 3, abs=1e-15)  # token-mean
    assert out.metrics["entropy/mean"].item() == pytest.approx(2.0, abs=1e-15)
    out.loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[1 / 3, 1 / 3, 0], [1 / 3, 0, 0]], dtype=F64))
    seq = entropy_loss(entropy=entropy, mask=mask, aggregation="seq-mean-token-mean")
    assert seq.loss.item() == pytest.approx(((1 + 2) / 2 + 3 / 1) / 2, abs=1e-15)  # (1.5 + 3) / 2
    half = entropy_loss(entropy=entropy[:1], mask=mask[:1], num_tokens=3)  # micro-batch, global count 3
    assert half.loss.item() == pytest.approx((1 + 2) / 3, abs=1e-15)
    assert half.metrics["entropy/mean"].item() == pytest.approx(1.5, abs=1e-15)  # this call's tokens


def test_hyperparameters_are_config_fields():
    assert hyperparameters_for(entropy_loss, AlgorithmConfig(), ENTROPY_TENSOR_ARGS) == {
        "aggregation": AlgorithmConfig().aggregation
    }


def test_bad_inputs_raise_clear_errors():
    logits, ids, _ = _inputs(7)
    with pytest.raises(ShapeError, match=r"token_ids must lie in \[0, 11\).*\[-100, "):
        token_logprobs(logits, torch.where(ids > 5, -100, ids))
    with pytest.raises(ShapeError, match="token_ids must be an integer tensor"):
        token_logprobs(logits, ids.double())
    with pytest.raises(ShapeError, match=r"token_ids has shape \(3, 4\)"):
        token_logprobs(logits, ids[:, :4])
    with pytest.raises(ShapeError, match="logits must be 3-D"):
        entropy_from_logits(logits[0])
    with pytest.raises(ShapeError, match="logits must be a floating"):
        entropy_from_logits(ids[..., None])
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        token_logprobs(logits, ids, temperature=0.0)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        entropy_from_logits(logits, chunk_size=0)
    with pytest.raises(ShapeError, match=r"mask must have shape \(3, 5\)"):
        entropy_loss(entropy=logits[..., 0], mask=torch.ones(3, 4, dtype=torch.bool))


def test_docstring_examples():
    assert doctest.testmod(entropy_module, extraglobs={"torch": torch}).failed == 0


_PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from rlvr.algorithms.entropy import entropy_from_logits, token_logprobs

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    mode, rows, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    logits = torch.empty(1, rows, vocab, dtype=torch.bfloat16).normal_().requires_grad_(True)
    ids = torch.randint(0, vocab, (1, rows))
    # Reset the peak resident set size (VmHWM) to the current one, so that the peak read after the
    # computation is the computation's own, whatever imports and set-up peaked at before.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    if mode == "chunked":
        out = entropy_from_logits(logits, chunk_size=64) + token_logprobs(logits, ids, chunk_size=64)
    else:
        z = logits.float()
        logp = torch.log_softmax(z, -1)
        out = -(logp.exp() * logp).sum(-1) + logp.gather(-1, ids[..., None]).squeeze(-1)
    out.sum().backward()
    peak = status_kib("VmHWM")
    print(json.dumps({"extra_mib": (peak - before) / 1024, "logits_mib": logits.numel() * 2 / 2**20}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs"
)
def test_peak_memory_of_forward_and_backward_against_naive():
    """Peak resident memory of entropy + logprobs, forward and backward, in fresh processes (CPU)."""
    rows, vocab = 512, 151_936  # bf16 logits: 148 MiB; one float32 copy: 297 MiB
    result = {}
    for mode in ("chunked", "naive"):
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, mode, str(rows), str(vocab)],
            capture_output=True,
            text=True,
            check=True,
        )
        result[mode] = json.loads(proc.stdout)
    print(result)
    logits_mib = result["chunked"]["logits_mib"]
    # Chunked: the bf16 gradients of the logits (two, summed into one) plus 64-row float32 blocks;
    # naive: several [rows, V] float32 tensors.
    assert result["chunked"]["extra_mib"] < 3.0 * logits_mib
    assert result["naive"]["extra_mib"] > 2 * result["chunked"]["extra_mib"]
