"""One fit of each variant through ``polyfit_models.fit`` against the lesson's own program.

The lesson programs below are written the way the lesson (and the PyTorch tutorial it comes
from) writes them: scalar parameters, the polynomial spelled out term by term, one Python loop
per fit, default settings. Both sides run in this process, on the same machine, with the same
torch thread count (``--threads``, set explicitly for both), best of ``--repeats``. The dynamic
model runs ``--dynamic-epochs`` epochs on both sides instead of the lesson's 30000 (said in the
output). Prints, per variant: lesson seconds, polyfit seconds, ratio (lesson / polyfit).

    python benchmarks/bench_models.py [--threads 2] [--repeats 3] [--dynamic-epochs 3000]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import random
import sys
import time
from pathlib import Path


def _threads_from_argv(default: int = 1) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=default)
    return parser.parse_known_args()[0].threads


# The thread pools of OpenMP, MKL and NumPy's OpenBLAS are sized when numpy and torch load,
# so the benchmark (the process edge) fixes them from --threads before importing either.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(_threads_from_argv())

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from polyfit_models import VARIANTS, JobSpec, fit  # noqa: E402

DEVNULL = open(os.devnull, "w")  # where the lesson's progress prints go


# --- the lesson's programs ----------------------------------------------------------------

def lesson_numpy(seed: int, epochs: int = 2000, lr: float = 1e-6) -> list[float]:
    rng = np.random.default_rng(seed)
    x = np.linspace(-math.pi, math.pi, 2000)
    y = np.sin(x)
    a, b, c, d = rng.standard_normal(4)
    for t in range(epochs):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = np.square(y_pred - y).sum()
        if t % 100 == 99:
            print(t, loss, file=DEVNULL)  # the lesson prints its progress
        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x ** 2).sum()
        grad_d = (grad_y_pred * x ** 3).sum()
        a -= lr * grad_a
        b -= lr * grad_b
        c -= lr * grad_c
        d -= lr * grad_d
    return [a, b, c, d]


def lesson_tensor(seed: int, epochs: int = 2000, lr: float = 1e-6) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float)
    y = torch.sin(x)
    a, b, c, d = (torch.randn((), generator=gen) for _ in range(4))
    for t in range(epochs):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum()
        if t % 100 == 99:
            print(t, loss.item(), file=DEVNULL)
        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x ** 2).sum()
        grad_d = (grad_y_pred * x ** 3).sum()
        a -= lr * grad_a
        b -= lr * grad_b
        c -= lr * grad_c
        d -= lr * grad_d
    return [a.item(), b.item(), c.item(), d.item()]


def lesson_autograd(seed: int, epochs: int = 2000, lr: float = 1e-6) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float)
    y = torch.sin(x)
    a, b, c, d = (torch.randn((), generator=gen, requires_grad=True) for _ in range(4))
    for t in range(epochs):
        y_pred = a + b * x + c * x ** 2 + d * x ** 3
        loss = (y_pred - y).pow(2).sum()
        if t % 100 == 99:
            print(t, loss.item(), file=DEVNULL)
        loss.backward()
        with torch.no_grad():
            for p in (a, b, c, d):
                p -= lr * p.grad
                p.grad = None
    return [a.item(), b.item(), c.item(), d.item()]


class LegendrePolynomial3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return 0.5 * (5 * input ** 3 - 3 * input)

    @staticmethod
    def backward(ctx, grad_output):
        input, = ctx.saved_tensors
        return grad_output * 1.5 * (5 * input ** 2 - 1)


def lesson_legendre(seed: int, epochs: int = 2000, lr: float = 5e-6) -> list[float]:
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float)
    y = torch.sin(x)
    a = torch.full((), 0.0, requires_grad=True)
    b = torch.full((), -1.0, requires_grad=True)
    c = torch.full((), 0.0, requires_grad=True)
    d = torch.full((), 0.3, requires_grad=True)
    P3 = LegendrePolynomial3.apply
    for t in range(epochs):
        y_pred = a + b * P3(c + d * x)
        loss = (y_pred - y).pow(2).sum()
        if t % 100 == 99:
            print(t, loss.item(), file=DEVNULL)
        loss.backward()
        with torch.no_grad():
            for p in (a, b, c, d):
                p -= lr * p.grad
                p.grad = None
    return [a.item(), b.item(), c.item(), d.item()]


class PolynomialModel(torch.nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.coeffs = torch.nn.ParameterDict({
            k: torch.nn.Parameter(torch.randn((), generator=gen)) for k in "abcd"})

    def forward(self, x):
        return (self.coeffs["a"] + self.coeffs["b"] * x + self.coeffs["c"] * x ** 2
                + self.coeffs["d"] * x ** 3)


def lesson_module(seed: int, epochs: int = 2000, lr: float = 1e-3) -> list[float]:
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float)
    y = torch.sin(x)
    model = PolynomialModel(torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = torch.nn.MSELoss()
    for t in range(epochs):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        if t % 100 == 99:
            print(t, loss.item(), file=DEVNULL)
        loss.backward()
        optimizer.step()
    return [p.item() for p in model.parameters()]


class DynamicHighOrder(torch.nn.Module):
    def __init__(self, gen, rnd, top=5):
        super().__init__()
        for k in "abcde":
            setattr(self, k, torch.nn.Parameter(torch.randn((), generator=gen)))
        self.rnd, self.top = rnd, top

    def forward(self, x):
        y = self.a + self.b * x + self.c * x ** 2 + self.d * x ** 3
        for exp in range(4, self.rnd.randint(4, self.top) + 1):
            y = y + self.e * x ** exp
        return y


def lesson_dynamic(seed: int, epochs: int = 30000, lr: float = 1e-8) -> list[float]:
    x = torch.linspace(-math.pi, math.pi, 2000, dtype=torch.float)
    y = torch.sin(x)
    model = DynamicHighOrder(torch.Generator().manual_seed(seed), random.Random(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = torch.nn.MSELoss()
    for t in range(epochs):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        if t % 100 == 99:
            print(t, loss.item(), file=DEVNULL)
        loss.backward()
        optimizer.step()
    return [p.item() for p in model.parameters()]


LESSON = {"numpy": lesson_numpy, "tensor": lesson_tensor, "autograd": lesson_autograd,
          "legendre": lesson_legendre, "module": lesson_module, "dynamic": lesson_dynamic}


def best_pair(repeats: int, lesson, polyfit) -> tuple[float, float]:
    """Best wall time of each side over ``repeats`` rounds, the two runs of a round back to
    back, so that a burst of load elsewhere on the machine hits both sides alike."""
    best_lesson = best_polyfit = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        lesson()
        best_lesson = min(best_lesson, time.perf_counter() - started)
        started = time.perf_counter()
        polyfit()
        best_polyfit = min(best_polyfit, time.perf_counter() - started)
    return best_lesson, best_polyfit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--dynamic-epochs", type=int, default=3000,
                        help="epochs for the dynamic model, both sides (lesson: 30000)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# single fit, lesson program vs polyfit_models.fit: {platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} torch threads, best of {args.repeats}")
    print(f"# dynamic: {args.dynamic_epochs} epochs on both sides (the lesson runs 30000)")
    print(f"{'variant':<10} {'lesson_s':>9} {'polyfit_s':>9} {'ratio':>6}")
    for name in args.variants.split(","):
        epochs = args.dynamic_epochs if name == "dynamic" else VARIANTS[name].defaults["epochs"]
        spec = JobSpec.create(name, epochs=epochs, seed=1)
        LESSON[name](0, epochs=min(epochs, 50))  # warm-up: first-call costs on neither side
        fit(JobSpec.create(name, epochs=50))
        lesson_s, polyfit_s = best_pair(args.repeats,
                                        functools.partial(LESSON[name], 1, epochs=epochs),
                                        functools.partial(fit, spec))
        print(f"{name:<10} {lesson_s:>9.3f} {polyfit_s:>9.3f} {lesson_s / polyfit_s:>6.2f}",
              flush=True)


if __name__ == "__main__":
    main()
