"""One training step: the device and precision it runs in, the objective (network, loss, group
regularizer) under train.compile, and the loop over a stretch of steps that never waits for the device.

A step is forward_backward (objective, then its backward) followed by the optimizer's step; the
training run (flgc.engine.training) calls train_steps for every stretch of an epoch.
"""
import contextlib
import functools
import sys

import torch

from ..errors import UsageError
from ..method.budget import regularizer_penalty
from ..method.layer import flgc_layers
from . import distributed
from .provenance import cpu_computes_bf16


# --- device and precision --------------------------------------------------------------------
def select_device(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def prepare_model(model, cfg, device):
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model

def resolve_amp(amp, device):
    """The autocast setting `auto` stands for on `device`: bf16 on CUDA GPUs and CPUs that compute
    it natively, else none (fp32)."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    return "bf16" if cpu_computes_bf16() else "none"


def warn_emulated_bf16(amp, device):
    """One line on stderr when train.amp=bf16 is forced on a CPU that only emulates bf16."""
    if amp == "bf16" and device.type == "cpu" and not cpu_computes_bf16():
        print("warning: train.amp=bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX / Arm BF16): "
              "training will be many times slower than train.amp=auto (fp32 here)", file=sys.stderr)


def autocast(amp, device):
    """The autocast context of a train.amp setting on `device`."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def resolve_compile(choice, device):
    """train.compile on `device`: auto is none (eager) on CPU and on CUDA. On CPU torch.compile
    measured slower than eager; on CUDA graph capture has not been measured with this code yet, so
    a first GPU run does not depend on it (configs/fast opt in to cudagraphs explicitly)."""
    if choice == "auto":
        return "none"
    if choice == "cudagraphs" and device.type != "cuda":
        raise UsageError("train.compile=cudagraphs needs a CUDA device; on CPU use none, inductor or auto")
    return choice


def compiled(fn, choice):
    """fn under train.compile `choice` (resolved): none, inductor, or inductor with CUDA graphs."""
    if choice == "none":
        return fn
    if choice == "inductor":
        return torch.compile(fn)
    graphed = torch.compile(fn, mode="reduce-overhead")

    def replay(*args):
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        return graphed(*args)
    return replay


def forward_backward(loss_fn, images, labels, optimizer, scaler=None):
    """The objective's outputs after their backward pass (gradients set, optimizer not stepped)."""
    outputs = loss_fn(images, labels)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(outputs[0]) if scaler is not None else outputs[0]).backward()
    return outputs


class GuardedObjective:
    """The step's objective under a train.compile choice, with a way out: when compiling or graph
    capture raises in one of the first GUARDED_STEPS steps (forward or backward; CUDA graphs are
    recorded after warm-up calls, not in the first), one warning line says so, the model's buffers
    (BatchNorm statistics) are put back, and that step and every later one run eagerly, so the run
    continues with the results an eager run gives. The optimizer has not stepped in a failed step."""

    GUARDED_STEPS = 3

    def __init__(self, eager, choice, model):
        self.eager, self.choice, self.model = eager, choice, model
        self.fn = compiled(eager, choice)
        self.unproven = 0 if choice == "none" else self.GUARDED_STEPS

    def __call__(self, images, labels):
        return self.fn(images, labels)

    def forward_backward(self, images, labels, optimizer, scaler=None):
        if not self.unproven:
            return forward_backward(self.fn, images, labels, optimizer, scaler)
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            outputs = forward_backward(self.fn, images, labels, optimizer, scaler)
        except Exception as err:  # noqa: BLE001 - any failure of the compiler or of capture
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            step = self.GUARDED_STEPS - self.unproven + 1
            print(f"warning: train.compile={self.choice} failed in step {step} ({type(err).__name__}: {reason}); "
                  f"continuing eager", file=sys.stderr, flush=True)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            self.fn, self.choice = self.eager, "none"
            outputs = forward_backward(self.fn, images, labels, optimizer, scaler)
            self.unproven = 1
        self.unproven -= 1
        return outputs


# --- the objective and the steps ---------------------------------------------------------------
class EpochSums:
    """Running sums of an epoch on the device (loss x images, regularizer x images, correct
    predictions), the count of images on the host (batches have one shape), and a device flag that
    turns false when a loss is not finite. Reading them is the only wait for the device."""

    KEYS = ("loss", "regularizer", "correct")

    def __init__(self, device, saved=None):
        saved = saved or {}
        self.values = torch.tensor([float(saved.get(k, 0)) for k in self.KEYS], dtype=torch.float64, device=device)
        self.seen = int(saved.get("seen", 0))
        self.finite = torch.ones((), dtype=torch.bool, device=device)

    def add(self, total, loss, penalty, correct, count):
        self.finite &= torch.isfinite(total)
        parts = torch.stack([loss.detach().double() * count, penalty.detach().double() * count, correct.double()])
        self.values += parts
        self.seen += count

    def totals(self):
        """The sums over every process of a distributed run (every process must call it), as a dict."""
        totals = distributed.sum_over_processes(torch.cat([self.values, self.values.new_tensor([self.seen])]))
        *values, seen = totals.tolist()
        return {**dict(zip(self.KEYS, values)), "seen": int(seen)}

    def stats(self):
        """Means over every process of a distributed run."""
        totals = self.totals()
        loss, regularizer, correct = (totals[k] for k in self.KEYS)
        seen = max(totals["seen"], 1)
        return {"train_loss": loss / seen, "regularizer": regularizer / seen, "train_accuracy": 100.0 * correct / seen}


def weighted_penalty(model, reg):
    """penalty() -> weight x the regularizer `reg` (the flgc.regularizer config keys) of `model`'s trainable FLGC
    layers; None when it is 0 (no weight, or no FLGC layer still learning)."""
    if not reg.weight or not flgc_layers(model, trainable=True):
        return None

    def penalty():
        return reg.weight * regularizer_penalty(model, reg.kind, reg.target_mflops, reg.target_fraction)
    penalty()  # eager once: the whole-model budget measures its MAC weights on first use, outside any graph
    return penalty


def objective(network, criterion, penalty=None, amp=None):
    """f(images, labels) -> (total loss, criterion loss, penalty, correct predictions): the part of
    a step that train.compile compiles or captures. penalty() is the weighted regularizer."""
    precision = amp if amp is not None else contextlib.nullcontext

    def forward(images, labels):
        with precision():
            logits = network(images)
            loss = criterion(logits, labels)
        extra = penalty() if penalty is not None else torch.zeros((), device=loss.device)
        return loss.float() + extra, loss, extra, (logits.argmax(1) == labels).sum()
    return forward


def train_steps(loss_fn, optimizer, batches, sums, scheduler=None, scaler=None, stop=None, steps=None):
    """Train on `batches` from batches.start_step on, for at most `steps` steps (default: the rest
    of the epoch) or until stop() turns true; adds to `sums`. Nothing here waits for the device.
    Returns the steps of the epoch done so far."""
    done = batches.start_step
    end = len(batches) if steps is None else min(len(batches), done + steps)
    step = getattr(loss_fn, "forward_backward", None) or functools.partial(forward_backward, loss_fn)
    for images, labels in batches:
        total, loss, penalty, correct = step(images, labels, optimizer, scaler)
        if scaler is not None:  # fp16: loss scaling
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        sums.add(total, loss, penalty, correct, labels.shape[0])
        done += 1
        if done >= end or (stop is not None and stop()):
            break
    return done


