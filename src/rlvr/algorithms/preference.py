"""Preference losses on (chosen, rejected) pairs: DPO (+ conservative label smoothing), IPO, SimPO.

Every loss has the same signature, so the DPO stage never special-cases one::

    fn(*, policy_chosen, policy_rejected,                # [B] sequence log-probs, with gradient
       reference_chosen=None, reference_rejected=None,   # [B] frozen reference, or None
       chosen_lengths=None,                              # [B] completion tokens of the chosen answer
       num_pairs=None,                                   # global denominator (micro-batches, ranks)
       <hyperparameters>, sft_coef=0.0) -> LossOutput

Pair i is (x_i, y_w, y_l): a prompt, its chosen (preferred) and its rejected completion. The
sequence log-probs come from :func:`sequence_logprobs` over the completion tokens only; each loss
says which kind it takes in its attribute ``average_logprobs`` (False: the sum, the papers'
log pi(y|x); True: the per-token mean, SimPO's length-normalised reward), and whether it reads a
reference model in ``needs_reference``. The loop calls
``sequence_logprobs(logprobs, mask, average=fn.average_logprobs)``. Every keyword that is not in
:data:`PREFERENCE_TENSOR_ARGS` is a hyperparameter.

The loss is the mean over pairs of the per-pair loss (plus ``sft_coef`` times the per-token NLL of
the chosen answer, RPO's term); with ``num_pairs`` (the pairs of the whole mini-batch, summed over
micro-batches and ranks) it is the per-pair sum divided by it, so micro-batch losses add up to the
mini-batch's. Reference log-probs are detached: the reference is frozen.

Metrics (detached 0-D tensors, means over this call's pairs, 0 for an empty batch):
``preference/loss`` (the per-pair total), ``preference/reward_chosen``,
``preference/reward_rejected``, ``preference/reward_margin`` (chosen minus rejected), each the
loss's own implicit reward (see each loss), ``preference/accuracy`` (the fraction of pairs whose
chosen reward is strictly greater than the rejected one), and ``preference/sft_nll`` when
``sft_coef > 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlvr.algorithms.checks import check_mask, check_tensor
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

PREFERENCE_LOSSES: Registry = Registry("preference loss")

PREFERENCE_TENSOR_ARGS: tuple[str, ...] = (
    "policy_chosen",
    "policy_rejected",
    "reference_chosen",
    "reference_rejected",
    "chosen_lengths",
    "num_pairs",
)
"""Arguments the loop supplies; every other keyword of a preference loss is a hyperparameter."""


# --- sequence log-probabilities --------------------------------------------------------------


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, *, average: bool) -> torch.Tensor:
    """Each sequence's completion log-probability: the masked sum, or mean, of token log-probs.

    ``logprobs`` [B, T] are the per-token log pi(y_t | x, y_<t) of the sequence's tokens and
    ``mask`` [B, T] (bool or floating 0/1) marks the completion tokens. Returns [B]::

        average=False:  log pi(y|x)         = sum_t m_t logprobs_t          (DPO eq. 7, IPO eq. 17)
        average=True:   (1/|y|) log pi(y|x) = sum_t m_t logprobs_t / |y|    (SimPO eq. 6)

    with |y| = sum_t m_t. Padding never matters: positions outside the mask are replaced by 0
    before the sum (``torch.where``, not a multiplication by the mask), so inf or nan there changes
    neither the value nor the gradient. A row with no completion token gives 0.

    >>> lp = torch.tensor([[-1.0, -3.0, float("nan")], [-2.0, float("-inf"), float("-inf")]])
    >>> mask = torch.tensor([[True, True, False], [True, False, False]])
    >>> sequence_logprobs(lp, mask, average=False)
    tensor([-4., -2.])
    >>> sequence_logprobs(lp, mask, average=True)
    tensor([-2., -2.])
    """
    check_tensor(logprobs, "logprobs", 2)
    if not logprobs.dtype.is_floating_point:
        raise ShapeError(f"logprobs must be a floating tensor, got dtype {logprobs.dtype}")
    keep = check_mask(mask, "mask", tuple(logprobs.shape)).bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    total = torch.where(keep, logprobs, zero).sum(-1)  # [B]
    if not average:
        return total
    return total / keep.sum(-1).clamp(min=1).to(logprobs.dtype)


# --- shared pieces ---------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float, low_open: bool, high: float | None = None) -> None:
    """A finite number in [low, high) or (low, high): a ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value >= high:
        raise ConfigError(f"{name} must be < {high}, got {value!r}")


def _reference_free_names() -> str:
    names = PREFERENCE_LOSSES.names()
    return ", ".join(n for n in names if not getattr(PREFERENCE_LOSSES.get(n), "needs_reference", True))


def _prepare(
    name: str,
    needs_reference: bool,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None,
    reference_rejected: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the pair tensors; return (chosen, rejected) log-ratios, or the policy's for reference-free."""
    check_tensor(policy_chosen, "policy_chosen", 1)
    if not policy_chosen.dtype.is_floating_point:
        raise ShapeError(f"policy_chosen must be a floating tensor, got dtype {policy_chosen.dtype}")
    given = {
        "policy_rejected": policy_rejected,
        "reference_chosen": reference_chosen,
        "reference_rejected": reference_rejected,
    }
    for arg, t in given.items():
        if t is None:
            continue
        check_tensor(t, arg, 1)
        if not t.dtype.is_floating_point:
            raise ShapeError(f"{arg} must be a floating tensor, got dtype {t.dtype}")
        if t.shape != policy_chosen.shape:
            raise ShapeError(
                f"{arg} has shape {tuple(t.shape)} but policy_chosen has shape "
                f"{tuple(policy_chosen.shape)}; there is one entry per pair"
            )
    if policy_rejected is None:
        raise ShapeError("policy_rejected must be a torch.Tensor [B], got None")
    has_reference = (reference_chosen is not None, reference_rejected is not None)
    if needs_reference and not all(has_reference):
        raise ConfigError(
            f"preference loss '{name}' needs reference_chosen and reference_rejected, the frozen "
            f"reference model's sequence log-probs [B]; reference-free losses: {_reference_free_names()}"
        )
    if not needs_reference:
        if any(has_reference):
            raise ConfigError(
                f"preference loss '{name}' is reference-free and would ignore reference_chosen / "
                "reference_rejected; pass None for both"
            )
        return policy_chosen, policy_rejected.to(policy_chosen.dtype)
    dtype = policy_chosen.dtype
    chosen = policy_chosen - reference_chosen.detach().to(dtype)
    rejected = policy_rejected.to(dtype) - reference_rejected.detach().to(dtype)
    return chosen, rejected


def _chosen_nll(
    name: str, average_logprobs: bool, policy_chosen: torch.Tensor, chosen_lengths: torch.Tensor | None
) -> torch.Tensor:
    """Per-token NLL of each chosen completion [B] (RPO, arXiv 2404.19733 eq. 3)."""
    if average_logprobs:  # the inputs already are per-token means
        return -policy_chosen
    if chosen_lengths is None:
        raise ConfigError(
            f"sft_coef > 0 with preference loss '{name}' needs chosen_lengths [B], the number of "
            "completion tokens of each chosen answer (its sequence log-prob is a sum)"
        )
    check_tensor(chosen_lengths, "chosen_lengths", 1)
    if chosen_lengths.shape != policy_chosen.shape:
        raise ShapeError(
            f"chosen_lengths has shape {tuple(chosen_lengths.shape)} but policy_chosen has shape "
            f"{tuple(policy_chosen.shape)}; there is one entry per pair"
        )
    lengths = chosen_lengths.detach().to(policy_chosen.dtype)
    if bool((lengths <= 0).any()):
        raise ShapeError("chosen_lengths must be positive: every chosen answer has at least one token")
    return -policy_chosen / lengths


def _finish(
    per_pair: torch.Tensor,
    reward_chosen: torch.Tensor,
    reward_rejected: torch.Tensor,
    *,
    name: str,
    average_logprobs: bool,
    policy_chosen: torch.Tensor,
    chosen_lengths: torch.Tensor | None,
    num_pairs: float | torch.Tensor | None,
    sft_coef: float,
) -> LossOutput:
    """Add the SFT term, average over pairs (or divide by ``num_pairs``) and compute the metrics."""
    metrics: dict[str, torch.Tensor] = {}
    batch = max(per_pair.shape[0], 1)
    if sft_coef > 0:
        nll = _chosen_nll(name, average_logprobs, policy_chosen, chosen_lengths)
        per_pair = per_pair + sft_coef * nll
        metrics["preference/sft_nll"] = nll.detach().sum() / batch
    if num_pairs is None:
        loss = per_pair.sum() / batch
    else:  # the pairs of the whole mini-batch: micro-batch losses add up to its loss
        loss = per_pair.sum() / torch.as_tensor(num_pairs, dtype=torch.float64).clamp(min=1.0).to(per_pair)
    rc, rr = reward_chosen.detach(), reward_rejected.detach()
    metrics.update(
        {
            "preference/loss": per_pair.detach().sum() / batch,
            "preference/reward_chosen": rc.sum() / batch,
            "preference/reward_rejected": rr.sum() / batch,
            "preference/reward_margin": (rc - rr).sum() / batch,
            "preference/accuracy": (rc > rr).to(rc.dtype).sum() / batch,
        }
    )
    return LossOutput(loss=loss, metrics=metrics)


# --- DPO --------------------------------------------------------------------------------------


@PREFERENCE_LOSSES.register("dpo")
def dpo(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None = None,
    reference_rejected: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    num_pairs: float | torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    sft_coef: float = 0.0,
) -> LossOutput:
    """DPO: the logistic loss of the difference of the two implicit rewards.

    DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), with the implicit reward of eq. 5
    r(x, y) = beta log(pi(y|x) / pi_ref(y|x)) and log pi(y|x) the sum over the completion's tokens::

        h   = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
        L_i = -log sigmoid(beta h)

    Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences and relationship to
    IPO"): each label is assumed flipped with probability ``label_smoothing`` = eps in [0, 0.5)::

        L_i = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)  =  -log sigmoid(beta h) + eps beta h

    eps = 0 (the default) is eq. 7 exactly. d L_i / d log pi(y_w|x) = -beta (sigmoid(-beta h) - eps):
    the chosen log-prob is pushed up and the rejected one down, ever more weakly once the pair is
    ranked right; with eps > 0 the push reverses once sigmoid(beta h) > 1 - eps. The paper uses
    beta = 0.1 (0.5 for TL;DR summarisation). Rewards (metrics) are beta times each log-ratio.

    Worked example, beta = 0.1, one pair, log-ratios 1 (chosen) and -1 (rejected): h = 2,
    L = log(1 + e^-0.2) = 0.5981, dL/dpolicy_chosen = -0.1 sigmoid(-0.2) = -0.0450.

    >>> pc = torch.tensor([-10.0], requires_grad=True)
    >>> out = dpo(policy_chosen=pc, policy_rejected=torch.tensor([-12.0]),
    ...           reference_chosen=torch.tensor([-11.0]), reference_rejected=torch.tensor([-11.0]))
    >>> out.loss.backward()
    >>> round(out.loss.item(), 4), round(pc.grad.item(), 4)
    (0.5981, -0.045)
    >>> round(out.metrics["preference/reward_margin"].item(), 4)
    0.2
    """
    _check_number("beta", beta, low=0.0, low_open=True)
    _check_number("label_smoothing", label_smoothing, low=0.0, low_open=False, high=0.5)
    _check_number("sft_coef", sft_coef, low=0.0, low_open=False)
    chosen, rejected = _prepare(
        "dpo", True, policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    logits = beta * (chosen - rejected)  # [B]
    per_pair = -F.logsigmoid(logits)
    if label_smoothing > 0:
        per_pair = (1.0 - label_smoothing) * per_pair - label_smoothing * F.logsigmoid(-logits)
    return _finish(
        per_pair,
        beta * chosen,
        beta * rejected,
        name="dpo",
        average_logprobs=False,
        policy_chosen=policy_chosen,
        chosen_lengths=chosen_lengths,
        num_pairs=num_pairs,
        sft_coef=sft_coef,
    )


# --- IPO --------------------------------------------------------------------------------------


@PREFERENCE_LOSSES.register("ipo")
def ipo(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None = None,
    reference_rejected: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    num_pairs: float | torch.Tensor | None = None,
    ipo_tau: float = 0.1,
    sft_coef: float = 0.0,
) -> LossOutput:
    """IPO: regress the log-ratio difference onto the fixed target 1 / (2 tau).

    IPO (Azar et al. 2023, arXiv 2310.12036, eq. 17, the sampled loss), with h the same
    difference of log-ratios as DPO's, log pi(y|x) the sum over the completion's tokens::

        h   = log(pi(y_w|x) pi_ref(y_l|x) / (pi(y_l|x) pi_ref(y_w|x)))
        L_i = (h - 1 / (2 tau))^2

    The paper squares h minus the target, with no factor in front of h; tau (``ipo_tau``) is its
    KL regulariser: a smaller tau asks for a larger margin. Unlike DPO the loss is bounded
    below at a finite margin, so the gradient changes sign there: a pair ranked right by more
    than 1/(2 tau) has its chosen log-prob pushed *down*. Rewards (metrics) are the unscaled
    log-ratios, so ``preference/reward_margin`` is the mean h, to compare with 1/(2 tau).
    tau = 0.1 is rlvr's default (the paper fixes none for language models).

    Popular implementations call tau ``beta`` and average the log-probs over the tokens of each
    completion; this function takes whatever it is given: pass
    ``sequence_logprobs(..., average=True)`` for that variant (its target 1/(2 tau) is then per
    token), the sums (the default of the DPO stage, ``average_logprobs = False``) for the paper's.

    Worked example, tau = 0.1, one pair, log-ratios 1 (chosen) and -1 (rejected): h = 2,
    L = (2 - 5)^2 = 9, dL/dpolicy_chosen = 2 (2 - 5) = -6.

    >>> pc = torch.tensor([-10.0], requires_grad=True)
    >>> out = ipo(policy_chosen=pc, policy_rejected=torch.tensor([-12.0]),
    ...           reference_chosen=torch.tensor([-11.0]), reference_rejected=torch.tensor([-11.0]))
    >>> out.loss.backward()
    >>> out.loss.item(), pc.grad.item()
    (9.0, -6.0)
    """
    _check_number("ipo_tau", ipo_tau, low=0.0, low_open=True)
    _check_number("sft_coef", sft_coef, low=0.0, low_open=False)
    chosen, rejected = _prepare(
        "ipo", True, policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    per_pair = (chosen - rejected - 1.0 / (2.0 * ipo_tau)) ** 2
    return _finish(
        per_pair,
        chosen,
        rejected,
        name="ipo",
        average_logprobs=False,
        policy_chosen=policy_chosen,
        chosen_lengths=chosen_lengths,
        num_pairs=num_pairs,
        sft_coef=sft_coef,
    )


# --- SimPO ------------------------------------------------------------------------------------


@PREFERENCE_LOSSES.register("simpo")
def simpo(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None = None,
    reference_rejected: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    num_pairs: float | torch.Tensor | None = None,
    beta: float = 2.0,
    simpo_gamma: float = 1.0,
    sft_coef: float = 0.0,
) -> LossOutput:
    """SimPO: reference-free, with the length-normalised log-likelihood as reward and a margin.

    SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6), whose reward (eq. 4) is
    r(x, y) = beta / |y| log pi(y|x), the mean token log-prob times beta::

        L_i = -log sigmoid(beta / |y_w| log pi(y_w|x) - beta / |y_l| log pi(y_l|x) - gamma)

    ``policy_chosen`` / ``policy_rejected`` are therefore the **per-token means**
    (``sequence_logprobs(..., average=True)``; ``average_logprobs = True``), and there is no
    reference model: both reference tensors must be None. ``simpo_gamma`` is the target reward
    margin gamma >= 0. The paper tunes beta and gamma per model (beta around 2 to 2.5 in its main
    runs); the defaults beta = 2, gamma = 1 are rlvr's. Rewards (metrics) are beta times the mean
    log-probs; the margin metric does not subtract gamma. ``chosen_lengths`` is not needed for
    the SFT term (the per-token NLL is -policy_chosen) and is ignored.

    Worked example, beta = 2, gamma = 1, one pair, mean log-probs -1 (chosen) and -1.5
    (rejected): 2 (0.5) - 1 = 0, L = log 2 = 0.6931, dL/dpolicy_chosen = -2 sigmoid(0) = -1.

    >>> pc = torch.tensor([-1.0], requires_grad=True)
    >>> out = simpo(policy_chosen=pc, policy_rejected=torch.tensor([-1.5]))
    >>> out.loss.backward()
    >>> round(out.loss.item(), 4), pc.grad.item()
    (0.6931, -1.0)
    """
    _check_number("beta", beta, low=0.0, low_open=True)
    _check_number("simpo_gamma", simpo_gamma, low=0.0, low_open=False)
    _check_number("sft_coef", sft_coef, low=0.0, low_open=False)
    chosen, rejected = _prepare(
        "simpo", False, policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    reward_chosen, reward_rejected = beta * chosen, beta * rejected
    per_pair = -F.logsigmoid(reward_chosen - reward_rejected - simpo_gamma)
    return _finish(
        per_pair,
        reward_chosen,
        reward_rejected,
        name="simpo",
        average_logprobs=True,
        policy_chosen=policy_chosen,
        chosen_lengths=chosen_lengths,
        num_pairs=num_pairs,
        sft_coef=sft_coef,
    )


# What the loop asks of a loss: which sequence log-probs it takes and whether it reads a reference.
for _loss, _average, _reference in ((dpo, False, True), (ipo, False, True), (simpo, True, False)):
    _loss.average_logprobs = _average  # type: ignore[attr-defined]
    _loss.needs_reference = _reference  # type: ignore[attr-defined]
