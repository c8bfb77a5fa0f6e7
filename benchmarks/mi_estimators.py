"""MI estimators (mmrl.objectives.local_mi) against the true MI of correlated Gaussians.

Poole et al. (2019), "On Variational Bounds of Mutual Information", §5: x, y in R^d (d = 20) with
y_k = rho x_k + sqrt(1 - rho^2) eps_k, so I(x; y) = -d/2 log(1 - rho^2) nats; rho is chosen so
that the true MI is 2, 4, 6, 8, 10 nats. For each estimator and each level a fresh critic
(mmrl.heads.critics; separable by default, as Poole et al.: MLPs 256-256 -> 32) is trained with
Adam on fresh batches, and the estimate on the training batch is recorded every step. The table
shows its mean +- std over the last `--last` steps.

The estimators and critics are the library's: `training_bound` gives the loss, `mi_estimates`
the read-out (for JSD: NWJ on T + 1). All levels of one estimator train at once (vmap) inside one
jitted lax.scan.

COMMAND: JAX_PLATFORMS=cpu python benchmarks/mi_estimators.py            (2 CPU cores: ~1-2 min)
         JAX_PLATFORMS=cpu python benchmarks/mi_estimators.py --critic=concat_mlp --steps=1000
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmrl.heads.critics import make_critic
from mmrl.objectives.local_mi import ESTIMATORS, mi_estimates, training_bound

MI_LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)


def rho_for_mi(mi: float, dim: int) -> float:
  """The componentwise correlation whose Gaussian pair has `mi` nats over `dim` components."""
  return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def sample_correlated(key: jax.Array, rho: jax.Array, batch: int, dim: int
                      ) -> tuple[jax.Array, jax.Array]:
  """x ~ N(0, I), y = rho x + sqrt(1 - rho^2) eps: [batch, dim] each."""
  kx, ke = jax.random.split(key)
  x = jax.random.normal(kx, (batch, dim))
  eps = jax.random.normal(ke, (batch, dim))
  return x, rho * x + jnp.sqrt(1.0 - rho * rho) * eps


def train_estimator(estimator: str, mi_levels: Sequence[float], *, dim: int = 20,
                    batch: int = 64, steps: int = 1500, lr: float = 5e-4,
                    critic: str = "separable", hidden: Sequence[int] = (256, 256),
                    embed_dim: int = 32, seed: int = 0) -> np.ndarray:
  """Trains one critic per MI level with `estimator`; returns the estimates f32[levels, steps]."""
  module = make_critic(critic, hidden=hidden, dim=embed_dim, name=None)
  tx = optax.adam(lr)
  eye = jnp.eye(batch, dtype=bool)
  pos_ok, neg_ok = jnp.ones((batch,), bool), ~eye

  def scores_fn(params, x, y):
    return module.apply(params, x[:, None, :], y)[..., 0]        # [B,B]

  def loss_fn(params, x, y):
    s = scores_fn(params, x, y)
    bound = training_bound(estimator, s, pos_ok, neg_ok)
    return -bound, mi_estimates(jax.lax.stop_gradient(s), pos_ok, neg_ok)[estimator]

  def one_level(key, rho):
    init_key, data_key = jax.random.split(key)
    x0, y0 = sample_correlated(data_key, rho, batch, dim)
    params = module.init(init_key, x0[:, None, :], y0)
    opt_state = tx.init(params)

    def step(carry, k):
      params, opt_state = carry
      x, y = sample_correlated(k, rho, batch, dim)
      (_, est), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), est

    _, estimates = jax.lax.scan(step, (params, opt_state), jax.random.split(data_key, steps))
    return estimates

  rhos = jnp.asarray([rho_for_mi(m, dim) for m in mi_levels], jnp.float32)
  keys = jax.random.split(jax.random.key(seed), len(mi_levels))
  return np.asarray(jax.jit(jax.vmap(one_level))(keys, rhos))


def run(estimators: Sequence[str] = ESTIMATORS, mi_levels: Sequence[float] = MI_LEVELS, *,
        last: int = 300, **kwargs) -> dict[str, np.ndarray]:
  """{estimator: f32[levels, 2]} = mean and std of the estimate over the last `last` steps."""
  out = {}
  for est in estimators:
    traj = train_estimator(est, mi_levels, **kwargs)
    tail = traj[:, -last:]
    out[est] = np.stack([tail.mean(axis=1), tail.std(axis=1)], axis=1)
  return out


def format_table(results: dict[str, np.ndarray], mi_levels: Sequence[float], batch: int) -> str:
  head = "| estimator | " + " | ".join(f"true {m:g}" for m in mi_levels) + " |"
  lines = [head, "|" + "---|" * (len(mi_levels) + 1)]
  for est, r in results.items():
    cells = " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in r)
    lines.append(f"| {est} | {cells} |")
  lines.append(f"(InfoNCE cap: log batch = log {batch} = {math.log(batch):.2f} nats)")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--estimators", default=",".join(ESTIMATORS))
  p.add_argument("--mi", default=",".join(f"{m:g}" for m in MI_LEVELS))
  p.add_argument("--dim", type=int, default=20)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--last", type=int, default=300)
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--critic", default="separable")
  p.add_argument("--hidden", default="256,256")
  p.add_argument("--embed_dim", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  levels = [float(m) for m in a.mi.split(",")]
  hidden = tuple(int(h) for h in a.hidden.split(",") if h)
  t0 = time.time()
  results = run(a.estimators.split(","), levels, last=a.last, dim=a.dim, batch=a.batch,
                steps=a.steps, lr=a.lr, critic=a.critic, hidden=hidden,
                embed_dim=a.embed_dim, seed=a.seed)
  print(f"MI estimates (nats), mean ± std over the last {a.last} of {a.steps} steps; "
        f"d={a.dim}, batch {a.batch}, {a.critic} critic hidden {hidden}"
        + (f" -> {a.embed_dim}" if a.critic == "separable" else "")
        + f", Adam lr {a.lr}, seed {a.seed}, {jax.devices()[0].platform}")
  print(format_table(results, levels, a.batch))
  print(f"wall time {time.time() - t0:.1f}s")


if __name__ == "__main__":
  main()
