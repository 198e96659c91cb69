"""The gated slot write recurrence over all chunks of a sequence, with a hand-written backward.

Training runs the write once per chunk, dozens of times per layer, on small tensors: under autograd
each step records ~15 nodes and its backward launches ~40 kernels plus parameter-gradient reductions at
every step. This function runs the same recurrence and, in the backward, walks the steps in reverse
with ~20 kernels each, reducing the gate-parameter gradients once at the end. `GatedSlotWrite.forward`
(the one-step rule, under plain autograd) is its reference; the tests hold the two to each other on
outputs and every gradient.

Step t, with mem (B, G, M, 2d) = [Km | Vm] and chunk features [R | KV | g] (B, G, C, d + 2d + 1):
    A = softmax_M(Km·Rᵀ)   s = max(Σ_C A, ε)   [K̂V̂ | ĝ] = (A / s)·[KV | g]
    γ = σ(b + Km·w_mem + ĝ + α·log s)           mem ← mem + γ·([K̂V̂] − mem)
"""

from __future__ import annotations

import torch


def gated_scan_steps(mem, features, gate_bias, gate_mem, gate_mass, floor):
    """Plain loop (no backward bookkeeping needed): states (B, G, n + 1, M, 2d), gates (B, G, n, M)."""
    states, gates = [mem], []
    for step_features in features.unbind(2):
        mem, gate, _ = _step(mem, step_features, gate_bias, gate_mem, gate_mass, floor)
        states.append(mem)
        gates.append(gate.squeeze(-1))
    return torch.stack(states, dim=2), torch.stack(gates, dim=2)


def _step(mem, features, gate_bias, gate_mem, gate_mass, floor):
    head_dim = mem.shape[-1] // 2
    mem_k = mem[..., :head_dim]
    assign = torch.softmax(
        torch.matmul(mem_k, features[..., :head_dim].transpose(-1, -2)), dim=-2
    )  # (B,G,M,C)
    raw_mass = assign.sum(dim=-1, keepdim=True)  # (B, G, M, 1)
    mass = raw_mass.clamp_min(floor)
    weights = assign / mass
    candidates = torch.matmul(weights, features[..., head_dim:])  # (B, G, M, 2d + 1)
    log_mass = mass.log()
    logit = gate_bias + torch.matmul(mem_k, gate_mem) + candidates[..., -1:] + gate_mass * log_mass
    gate = torch.sigmoid(logit)  # (B, G, M, 1)
    new_mem = torch.lerp(mem, candidates[..., :-1], gate)
    saved = (assign, weights, raw_mass > floor, mass, log_mass, candidates, gate)
    return new_mem, gate, saved


class GatedScan(torch.autograd.Function):
    """mem0 (B, G, M, 2d), features (B, G, n, C, F), gate_bias (G, M, 1), gate_mem (G, d, 1),
    gate_mass (G, 1, 1) -> states (B, G, n + 1, M, 2d), gates (B, G, n, M) (not differentiable)."""

    @staticmethod
    def forward(ctx, mem, features, gate_bias, gate_mem, gate_mass, floor):
        states, gates, saved = [mem], [], []
        for step_features in features.unbind(2):
            mem, gate, step_saved = _step(mem, step_features, gate_bias, gate_mem, gate_mass, floor)
            states.append(mem)
            gates.append(gate.squeeze(-1))
            saved.append(step_saved)
        states = torch.stack(states, dim=2)
        ctx.save_for_backward(states, features, gate_mem, gate_mass)
        ctx.step_saved = saved
        gates = torch.stack(gates, dim=2)
        ctx.mark_non_differentiable(gates)
        return states, gates

    @staticmethod
    def backward(ctx, grad_states, _grad_gates):
        states, features, gate_mem, gate_mass = ctx.saved_tensors
        steps = features.shape[2]
        head_dim = states.shape[-1] // 2
        grad_features = torch.empty_like(features)
        grad_logits = []  # dL/d(gate logit) per step, for the parameter gradients at the end
        grad_mem = grad_states[:, :, steps]
        for t in range(steps - 1, -1, -1):
            assign, weights, unclamped, mass, log_mass, candidates, gate = ctx.step_saved[t]
            mem = states[:, :, t]
            mem_k = mem[..., :head_dim]
            step_features = features[:, :, t]
            # new_mem = mem + gate·(cand − mem)
            grad_gate = (grad_mem * (candidates[..., :-1] - mem)).sum(-1, keepdim=True)
            grad_prev = grad_mem * (1.0 - gate)
            grad_logit = grad_gate * gate * (1.0 - gate)  # (B, G, M, 1)
            grad_logits.append(grad_logit)
            # candidates = weights · [KV | g]
            grad_candidates = torch.cat((grad_mem * gate, grad_logit), dim=-1)  # (B, G, M, 2d + 1)
            grad_weights = torch.matmul(grad_candidates, step_features[..., head_dim:].transpose(-1, -2))
            grad_kvg = torch.matmul(weights.transpose(-1, -2), grad_candidates)  # (B, G, C, 2d + 1)
            # weights = assign / mass, mass = max(Σ_C assign, ε); the gate also reads log mass
            grad_mass = grad_logit * gate_mass / mass - (grad_weights * weights).sum(-1, keepdim=True) / mass
            grad_assign = grad_weights / mass + grad_mass * unclamped
            # assign = softmax over slots (dim -2) of Km·Rᵀ
            grad_scores = assign * (grad_assign - (grad_assign * assign).sum(dim=-2, keepdim=True))
            grad_routed = torch.matmul(grad_scores.transpose(-1, -2), mem_k)  # (B, G, C, d)
            grad_mem_k = torch.matmul(
                grad_scores, step_features[..., :head_dim]
            ) + grad_logit * gate_mem.transpose(-1, -2)
            grad_features[:, :, t] = torch.cat((grad_routed, grad_kvg), dim=-1)
            grad_prev[..., :head_dim] += grad_mem_k
            grad_mem = grad_prev + grad_states[:, :, t]
        grad_logit = torch.stack(grad_logits[::-1], dim=2)  # (B, G, n, M, 1)
        log_mass = torch.stack([saved[4] for saved in ctx.step_saved], dim=2)
        mem_k = states[:, :, :steps, :, :head_dim]  # (B, G, n, M, d)
        grad_bias = grad_logit.sum(dim=(0, 2))  # (G, M, 1)
        grad_gate_mem = torch.einsum("bgnmd,bgnmo->gdo", mem_k, grad_logit)  # (G, d, 1)
        grad_gate_mass = (grad_logit * log_mass).sum(dim=(0, 2, 3), keepdim=False).unsqueeze(-1)  # (G, 1, 1)
        del ctx.step_saved
        return grad_mem, grad_features, grad_bias, grad_gate_mem, grad_gate_mass, None
