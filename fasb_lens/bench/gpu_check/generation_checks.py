"""The generation checks: each generates the same answers two ways that must agree
(cached and the reference loop, the fast and the bridge attention, one GPU and two)."""

from __future__ import annotations

from dataclasses import replace

from fasb_lens.bench.gpu_check.agreement import agreement_status, token_agreement
from fasb_lens.bench.gpu_check.results import timed
from fasb_lens.generation import generate
from fasb_lens.models import ModelOptions, bridge_attention
from fasb_lens.policies import FASB


def check_cached_equals_reference(model, prompts, config, half, results, dtype) -> None:
    """Cached generation (KV cache, one forward a token) gives the tokens of the authors'
    recompute loop (``reference`` mode)."""
    with timed(results, "generation: cached = reference loop", dtype) as found:
        cached = generate(model, prompts, config=config)
        reference = generate(model, prompts, config=replace(config, mode="reference"))
        agreement = token_agreement(
            [t.output_ids for t in cached], [t.output_ids for t in reference]
        )
        found["status"], found["detail"] = agreement_status(agreement, half, "token-equal")
        found["numbers"] = agreement


def check_fasb_backtracks(model, prompts, steering, config, results, dtype) -> None:
    """Every answer triggers (threshold above 1), drops its tokens since the check and is
    steered from there; cached and reference runs agree on the first steered token."""
    with timed(results, "FASB triggers and backtracks", dtype) as found:
        policy = FASB(alpha=8.0, threshold=1.1, backtrack_tokens=3)
        cached = generate(model, prompts, steering=steering, policy=policy, config=config)
        reference = generate(
            model,
            prompts,
            steering=steering,
            policy=policy,
            config=replace(config, mode="reference"),
        )
        triggered = sum(t.triggered for t in cached)
        dropped = sum(bool(t.discarded_ids) for t in cached)
        readings = [p for t in cached for p in t.p_true if p is not None]
        first_equal = sum(
            a.output_ids[:1] == b.output_ids[:1] for a, b in zip(cached, reference, strict=True)
        )
        found["numbers"] = {
            "answers": len(cached),
            "triggered": triggered,
            "backtracked": dropped,
            "first_token_equal_to_reference": first_equal,
            "p_true_range": [min(readings), max(readings)] if readings else None,
        }
        found["detail"] = (
            f"{triggered}/{len(cached)} triggered, {dropped} dropped tokens, first token = "
            f"reference in {first_equal}"
        )
        finite = all(0.0 <= p <= 1.0 for p in readings)
        if triggered < len(cached) or not finite:
            found["status"] = "FAIL"
            found["detail"] += "" if finite else "; p_true outside [0, 1]"


def check_fast_attention(model, prompts, config, half, results, dtype) -> None:
    """The fast attention (fused ``scaled_dot_product_attention``) generates the tokens the
    bridge's own attention generates."""
    with timed(results, "fast attention = bridge attention", dtype) as found:
        fast = generate(model, prompts, config=config)
        with bridge_attention():
            bridge = generate(model, prompts, config=config)
        agreement = token_agreement([t.output_ids for t in fast], [t.output_ids for t in bridge])
        found["status"], found["detail"] = agreement_status(agreement, half, "token-equal")
        found["numbers"] = agreement


def check_split_equals_one(options: ModelOptions, prompts, steering, config, results, dtype):
    """The model split over two GPUs generates what one GPU generates (unsteered and FASB)."""
    with timed(results, "model on 2 GPUs = on 1 GPU", dtype) as found:
        one = replace(options, device="cuda:0", device_map=None, n_devices=None).load()
        two = replace(options, device=None, device_map=None, n_devices=2).load()
        policy = FASB(alpha=8.0, threshold=1.1, backtrack_tokens=3)
        tokens = {}
        for key, model in (("one", one), ("two", two)):
            tokens[key] = [t.output_ids for t in generate(model, prompts, config=config)]
            steered = generate(model, prompts, steering=steering, policy=policy, config=config)
            tokens[key] += [t.output_ids for t in steered]
        agreement = token_agreement(tokens["one"], tokens["two"])
        found["numbers"] = {**agreement, "devices": int(two.cfg.n_devices)}
        found["status"], found["detail"] = agreement_status(agreement, False, "token-equal")
        del one, two
