"""The hooks behind ``GradTracker.attach(optimizer, scaler=...)``."""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["Attachment", "AttachmentHandle"]


class Attachment:
    """Runs ``tracker.step()`` right before every ``optimizer.step()`` (a step pre-hook, so it also fires when
    ``GradScaler.step`` calls the optimizer after unscaling). ``remove()`` undoes everything.

    GradScaler does not call ``optimizer.step()`` when it found inf/NaN, so no optimizer hook can see that
    step. Given the scaler, we wrap this one instance's ``step``: if the optimizer was not called during it,
    the scaler skipped it, and the tracker records a skipped step.

    A fused optimizer (``fused=True``) is the exception: GradScaler calls it on every step with the gradients
    still scaled and lets its kernel unscale them and skip on inf (``optimizer.grad_scale``/``found_inf``).
    The hook then unscales them in place first, as ``scaler.unscale_`` would, and clears ``grad_scale`` so
    the kernel does not divide again: the tracker measures and clips the gradients the update will use, and
    a step with inf/NaN, which the kernel skips, is recorded as skipped.
    """

    def __init__(self, tracker: Any, optimizer: torch.optim.Optimizer, scaler: Any = None):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"attach() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise ValueError(
                f"scaler must be a torch.amp.GradScaler (or have .step), got {type(scaler).__name__}"
            )
        self.tracker, self.optimizer, self.scaler = tracker, optimizer, scaler
        self._calls = 0
        self._pre = optimizer.register_step_pre_hook(self._before_step)
        self._wrapper = self._wrapped = None
        if scaler is not None:
            # (another attachment may have wrapped it already: a GAN's two trackers share one scaler;
            # wrappers of attachments gone since are left out: a notebook cell re-run adds one each time)
            self._wrapped = _live(scaler.step)
            self._wrapper = scaler.step = self._wrap_scaler_step(self._wrapped)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # (the hook's args start with the optimizer itself)
        if any(callable(a) for a in args if a is not optimizer) or callable(kwargs.get("closure")):
            # step(closure) computes the gradients inside step(), after this hook: it would measure (and
            # clip) the previous ones, and nothing it does would reach the update.
            raise RuntimeError(
                f"{type(optimizer).__name__}.step(closure) computes the gradients inside step(), after the "
                "hook attach() registered runs, so the tracker cannot measure or clip the gradients the "
                "update uses. Detach it (handle.remove()) and call tracker.step() in the closure after "
                "backward(), or step without a closure."
            )
        self._calls += 1
        scaler = None
        # GradScaler gives a fused optimizer found_inf (and grad_scale, unless the user unscaled already).
        if self.scaler is not None and isinstance(getattr(optimizer, "found_inf", None), torch.Tensor):
            if isinstance(getattr(optimizer, "grad_scale", None), torch.Tensor):
                _unscale_for_fused(optimizer)
            scaler = self.scaler  # inf/NaN means the kernel skips the step: record it as skipped
        self.tracker._attached_step(self, scaler=scaler)

    def grad_signature(self) -> list[tuple[Any, int]] | None:
        """Which gradients this optimizer holds now: the first gradient of each param group, by reference
        and version. A backward since (new tensors, or accumulated in place) or a clip changes it."""
        sig = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    sig.append((weakref.ref(p.grad), p.grad._version))
                    break
        return sig or None

    def same_gradients(self, sig: list[tuple[Any, int]] | None) -> bool:
        """Does this optimizer still hold the gradients ``sig`` was taken of (nothing computed since)?"""
        now = self.grad_signature()
        if sig is None or now is None or len(sig) != len(now):
            return False
        return all(a() is not None and a() is b() and u == v for (a, u), (b, v) in zip(sig, now, strict=True))

    def unscale_now(self) -> None:
        """Have the scaler unscale this optimizer's gradients before its own ``scaler.step`` (as a user may
        call ``scaler.unscale_``), so that a step measured before it sees them unscaled."""
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: False)():
            return
        try:
            self.scaler.unscale_(self.optimizer)
        except RuntimeError:  # unscaled already this iteration (by the user, or by us)
            pass

    def scaler_skips(self) -> bool:
        """Has this optimizer's GradScaler found inf/NaN in its unscaled gradients this iteration, so that
        ``scaler.step`` skips its update (or its fused kernel does)? One host sync; False before the scaler
        has looked at them or without a scaler."""
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: False)():
            return False
        # GradScaler keeps no public record of it: this is the state its own step() decides from.
        state = getattr(self.scaler, "_per_optimizer_states", {}).get(id(self.optimizer))
        found = state.get("found_inf_per_device") if isinstance(state, dict) else None
        return bool(found) and any(bool(f.item()) for f in found.values())

    def _wrap_scaler_step(self, original: Any) -> Any:
        # The scaler outlives a notebook cell's model, optimizer and tracker: its wrapper refers to this
        # attachment weakly, or it would keep them all alive (tracker.dropped).
        ref = weakref.ref(self)

        def step(optimizer, *args, **kwargs):
            below = step.wrapped  # (read at each call: _live splices out wrappers of attachments gone)
            attachment = ref()
            if attachment is None:
                return below(optimizer, *args, **kwargs)
            calls = attachment._calls
            out = below(optimizer, *args, **kwargs)
            if (
                optimizer is attachment.optimizer
                and attachment._calls == calls
                and attachment._pre is not None
            ):
                attachment.tracker._attached_step(attachment, skipped=True)
            return out

        step.attachment = ref  # (lets a removal further up the chain skip this one once it is removed)
        step.wrapped = original
        return step

    def drop_grads(self) -> None:
        """Make the coming optimizer step a no-op: torch's optimizers skip parameters whose grad is None."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def remove(self) -> None:
        if self._pre is not None:
            self._pre.remove()
            self._pre = None  # (our wrapper, if still in a chain, now passes straight through)
            if self.scaler is not None and vars(self.scaler).get("step") is self._wrapper:
                # On top: put back what we wrapped (the class's method, or another attachment's wrapper),
                # leaving out the wrappers of attachments removed while under ours. Under another
                # attachment's wrapper, we stay in its chain as a pass-through until it goes.
                below = _live(self._wrapped)
                if getattr(below, "__self__", None) is self.scaler:
                    del self.scaler.step
                else:
                    self.scaler.step = below
        self.tracker._forget(self)


def _passes_through(step: Any) -> bool:
    ref = getattr(step, "attachment", None)
    return ref is not None and (ref() is None or ref()._pre is None)


def _live(step: Any) -> Any:
    """``step`` (a GradScaler's ``step``, perhaps wrapped by attachments), less the wrappers whose attachment
    was removed or is gone, anywhere in the chain: they only pass through. (A notebook cell re-run attaches
    while the previous cell's attachment is not collected yet: left out at a later attach.)"""
    while _passes_through(step):
        step = step.wrapped
    wrapper = step
    while getattr(wrapper, "attachment", None) is not None:
        below = wrapper.wrapped
        while _passes_through(below):
            below = below.wrapped
        wrapper.wrapped = below
        wrapper = below
    return step


class AttachmentHandle:
    """What ``GradTracker.attach()`` returns: ``remove()`` detaches. It refers to the attachment weakly (the
    optimizer's step hook holds it): a notebook keeps a cell's last value (``Out``, ``_``), and a handle
    kept there must not keep the tracker, its model and optimizer alive once the cell is run again."""

    __slots__ = ("_ref", "__weakref__")

    def __init__(self, attachment: Attachment) -> None:
        self._ref = weakref.ref(attachment)

    @property
    def attachment(self) -> Attachment | None:
        """The attachment, while its optimizer (or tracker) is alive."""
        return self._ref()

    def remove(self) -> None:
        """Detach: the optimizer steps without the tracker from now on (nothing happens if it is gone)."""
        attachment = self._ref()
        if attachment is not None:
            attachment.remove()

    def __repr__(self) -> str:
        attachment = self._ref()
        if attachment is None:
            return "<gradwatch attachment (removed, or its optimizer is gone)>"
        state = "attached" if attachment._pre is not None else "removed"
        return f"<gradwatch attachment of {type(attachment.optimizer).__name__} ({state})>"


@torch.no_grad()
def _unscale_for_fused(optimizer: torch.optim.Optimizer) -> None:
    """Divide the gradients by ``optimizer.grad_scale`` in place and set it to None (GradScaler's contract
    with fused optimizers: it sets both attributes before the step and deletes them after)."""
    scale = optimizer.grad_scale
    grads: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and not p.grad.is_sparse:
                grads.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for (device, _), tensors in grads.items():
        inv = scale.double().reciprocal().float().to(device)
        found = torch.zeros(1, device=device)  # (GradScaler already knows; this kernel just also checks)
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, inv)
    optimizer.grad_scale = None
