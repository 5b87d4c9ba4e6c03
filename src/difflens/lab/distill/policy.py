"""Diffusion policies on a 2-D point-mass reaching environment, distilled from specialists.

State s = (position, velocity) in R⁴; action a ∈ [−1, 1]² is a force: v ← 0.8·v + 0.25·a,
p ← clip(p + 0.1·v, −1, 1) (velocity zeroed against a wall). Tasks differ by goal and by an optional
circular obstacle; an episode ends on reaching the goal (‖p − g‖ < 0.1, reward +1), on touching the
obstacle (reward −1) or after ``horizon`` steps; every step costs 0.1·‖p − g‖. A scripted
proportional-derivative controller with a tangential detour around obstacles is the expert.
A diffusion policy is a conditional denoiser over actions with the state as condition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from difflens.errors import DifflensError
from difflens.lab.distill.core import (
    DistillConfig,
    ModelSpec,
    SamplerSpec,
    SpecialistCache,
    budget,
    distill_generalist,
    fit_generalist,
    fit_specialists,
    generalist_fronts,
    pareto_weights,
    pseudo_label,
)
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, derive_seed, train_dsm
from difflens.models.nets import count_params

GOAL_RADIUS = 0.1


@dataclass(frozen=True)
class ReachTask:
    name: str
    goal: tuple[float, float]
    obstacle: tuple[float, float, float] | None = None  # centre x, centre y, radius

    def __str__(self) -> str:
        return self.name


TASKS = (
    ReachTask("reach-ne", (0.6, 0.6)),
    ReachTask("reach-w", (-0.7, 0.0)),
    ReachTask("avoid-se", (0.6, -0.6), (0.1, -0.2, 0.3)),
)
REACH_TASKS = {t.name: t for t in TASKS}


def reach_tasks(names: str | Sequence[str]) -> tuple[ReachTask, ...]:
    """The tasks named (a comma list or a sequence of names from ``REACH_TASKS``), in the given order."""
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    names = [n for n in names if n]
    if not names:
        raise DifflensError(f"--tasks needs at least one of {', '.join(REACH_TASKS)}")
    unknown = [n for n in names if n not in REACH_TASKS]
    if unknown:
        raise DifflensError(f"unknown task {unknown[0]!r}; choose from {', '.join(REACH_TASKS)}")
    if len(set(names)) < len(names):
        raise DifflensError(f"--tasks names a task twice: {','.join(names)}")
    return tuple(REACH_TASKS[n] for n in names)


class PointMass:
    """A batch of episodes, each with its own task; numpy float64, deterministic given the starts."""

    def __init__(self, tasks: Sequence[ReachTask], task_ids: np.ndarray, starts: np.ndarray, horizon: int = 50):
        self.tasks = tuple(tasks)
        self.task_ids = np.asarray(task_ids, dtype=np.int64)
        self.goal = np.array([self.tasks[k].goal for k in self.task_ids], dtype=np.float64)
        obs = [self.tasks[k].obstacle or (0.0, 0.0, 0.0) for k in self.task_ids]
        self.obstacle = np.array(obs, dtype=np.float64)
        self.pos = np.array(starts, dtype=np.float64)
        self.vel = np.zeros_like(self.pos)
        self.horizon = horizon
        self.t = 0
        self.done = np.zeros(len(self.pos), dtype=bool)
        self.success = np.zeros(len(self.pos), dtype=bool)
        self.ret = np.zeros(len(self.pos))

    def state(self) -> np.ndarray:
        return np.concatenate([self.pos, self.vel], axis=1)

    def step(self, action: np.ndarray) -> None:
        """Advance the running episodes by one step (finished ones stay frozen)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        live = ~self.done
        vel = 0.8 * self.vel + 0.25 * a
        pos = self.pos + 0.1 * vel
        hit_wall = np.abs(pos) > 1
        vel[hit_wall] = 0.0
        pos = np.clip(pos, -1, 1)
        self.pos[live], self.vel[live] = pos[live], vel[live]
        dist = np.linalg.norm(self.pos - self.goal, axis=1)
        crash = np.linalg.norm(self.pos - self.obstacle[:, :2], axis=1) < self.obstacle[:, 2]
        reached = (dist < GOAL_RADIUS) & ~crash
        self.ret[live] += -0.1 * dist[live] + 1.0 * reached[live] - 1.0 * crash[live]
        self.success |= live & reached
        self.t += 1
        self.done |= live & (reached | crash | (self.t >= self.horizon))


def random_starts(
    tasks: Sequence[ReachTask], task_ids: np.ndarray, rng: np.random.Generator, *, box: float = 0.9, clear: float = 0.4
) -> np.ndarray:
    """Positions uniform in [−box, box]², at least ``clear`` from the goal and 0.1 clear of the obstacle."""
    out = np.empty((len(task_ids), 2))
    for i, k in enumerate(task_ids):
        task = tasks[k]
        while True:
            p = rng.uniform(-box, box, size=2)
            if np.linalg.norm(p - task.goal) < clear:
                continue
            if task.obstacle and np.linalg.norm(p - task.obstacle[:2]) < task.obstacle[2] + 0.1:
                continue
            out[i] = p
            break
    return out


def expert_actions(tasks: Sequence[ReachTask], task_ids: np.ndarray, states: np.ndarray) -> np.ndarray:
    """The scripted expert: a = clip(3·(g − p) − 2·v + detour, −1, 1); near an obstacle that lies towards
    the goal the detour pushes sideways (on the side of the goal) and away from the centre."""
    states = np.asarray(states, dtype=np.float64)
    p, v = states[:, :2], states[:, 2:]
    goal = np.array([tasks[k].goal for k in task_ids])
    a = 3.0 * (goal - p) - 2.0 * v
    for i, k in enumerate(task_ids):
        obs = tasks[k].obstacle
        if obs is None:
            continue
        d = p[i] - np.array(obs[:2])
        dist = np.linalg.norm(d)
        to_goal = goal[i] - p[i]
        if dist < obs[2] + 0.35 and np.dot(to_goal, -d) > 0:
            n = d / max(dist, 1e-9)
            tangent = np.array([-n[1], n[0]])
            if np.dot(tangent, to_goal) < 0:
                tangent = -tangent
            push = (obs[2] + 0.35 - dist) / 0.35
            a[i] = a[i] + 4.0 * push * tangent + 3.0 * push * n
    return np.clip(a, -1, 1)


def rollout(
    policy: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tasks: Sequence[ReachTask],
    task_ids: np.ndarray,
    starts: np.ndarray,
    *,
    horizon: int = 50,
) -> dict:
    """Run ``policy(states, task_ids) -> actions`` on all episodes at once. Returns per-episode
    success and return, and the (state, action, task) triples of running steps."""
    env = PointMass(tasks, task_ids, starts, horizon)
    states, actions, ids = [], [], []
    while not env.done.all():
        live = ~env.done
        s = env.state()
        a = np.zeros_like(env.pos)
        a[live] = policy(s[live], env.task_ids[live])
        states.append(s[live])
        actions.append(a[live])
        ids.append(env.task_ids[live])
        env.step(a)
    return {
        "success": env.success.copy(),
        "return": env.ret.copy(),
        "states": np.concatenate(states),
        "actions": np.concatenate(actions),
        "task_ids": np.concatenate(ids),
    }


class DiffusionPolicy:
    """Actions sampled from one specialist per task (their ``sample``) or from one task-conditional
    generalist (by ``sampler``). Deterministic given the seed."""

    def __init__(self, models, sampler: SamplerSpec, seed: int = 0):
        self.models = models
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "policy"))

    def __call__(self, states: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        cond = torch.as_tensor(states, dtype=torch.float32)
        ids = torch.as_tensor(task_ids, dtype=torch.long)
        if not isinstance(self.models, list):
            return self.sampler(self.models, cond, ids, (2,), self.generator).clamp(-1, 1).numpy()
        out = torch.zeros(len(cond), 2)
        for k in ids.unique().tolist():
            sel = ids == k
            out[sel] = self.models[k].sample(cond[sel], self.generator)
        return out.clamp(-1, 1).numpy()


def demonstrations(tasks: Sequence[ReachTask], n: int, rng: np.random.Generator, horizon: int = 50) -> list[Pairs]:
    """n expert episodes per task as (state, action) pairs."""
    out = []
    for k in range(len(tasks)):
        ids = np.full(n, k)
        run = rollout(
            lambda s, t: expert_actions(tasks, t, s), tasks, ids, random_starts(tasks, ids, rng), horizon=horizon
        )
        out.append(
            Pairs(
                torch.as_tensor(run["states"], dtype=torch.float32),
                torch.as_tensor(run["actions"], dtype=torch.float32),
            )
        )
    return out


def random_states(tasks: Sequence[ReachTask], k: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Unlabeled conditions: positions uniform in the arena outside task k's obstacle, velocities in [−1, 1]²."""
    p = random_starts(tasks, np.full(n, k), rng, box=1.0, clear=0.0)
    v = rng.uniform(-1, 1, size=(n, 2))
    return torch.as_tensor(np.concatenate([p, v], axis=1), dtype=torch.float32)


@dataclass
class PolicyConfig(DistillConfig):
    """Demonstration sweep for diffusion policies on the point-mass tasks."""

    demos: tuple[int, ...] = (1, 4, 16)
    unlabeled: int = 4096
    relabel_rounds: int = 2
    relabel_episodes: int = 32
    relabel_steps: int = 1000
    relabel_lr: float = 5e-4
    eval_episodes: int = 50
    horizon: int = 50
    width: int = 256
    steps: int = 3000
    specialist_steps: int = 1500
    sampler_steps: int = 12
    tasks: tuple[ReachTask, ...] = field(default=TASKS)

    def check(self) -> None:
        if min(self.demos, default=0) < 1 or min(self.unlabeled, self.eval_episodes, self.horizon) < 1:
            raise DifflensError("need positive --demos, --unlabeled, --eval-episodes and --horizon")
        if self.relabel_rounds < 0 or (self.relabel_rounds and min(self.relabel_episodes, self.relabel_steps) < 1):
            raise DifflensError("relabelling needs rounds ≥ 0 and positive episodes and steps")
        if not self.tasks:
            raise DifflensError("need at least one task")
        self.check_shared()

    def units(self) -> int:
        per_n = len(self.tasks) * self.specialist_steps + 2 * self.steps + self.relabel_rounds * self.relabel_steps
        fronts = 2 * len(pareto_weights(2, self.pareto)) * self.steps if self.pareto and len(self.tasks) == 2 else 0
        return len(self.demos) * per_n + fronts


def run_policy(
    cfg: PolicyConfig,
    progress: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    cache: SpecialistCache | None = None,
) -> dict:
    """Expert, specialists, baseline (demos only), distilled, and distilled + on-policy relabelling,
    for each number of demonstrations per task; success rate and mean return per task. With two tasks
    and ``cfg.pareto`` > 0, the Pareto fronts of the distilled (before relabelling) and the baseline
    generalists at the largest number of demonstrations. The nets train and sample on ``device``;
    rollouts run on the CPU. ``cache``: specialist fits shared by the cells of a sweep."""
    cfg.check()
    tasks, k = cfg.tasks, len(cfg.tasks)
    sampler = SamplerSpec(steps=cfg.sampler_steps, clip=1.0)
    spec_model = ModelSpec(width=cfg.specialist_width, depth=cfg.specialist_depth, device=device)
    gen_model = ModelSpec(width=cfg.width, depth=cfg.depth, device=device)
    spec_cfg = DSMConfig(steps=cfg.specialist_steps, batch=cfg.batch)
    gen_cfg = DSMConfig(steps=cfg.steps, batch=cfg.batch)
    scal = Scalarization(cfg.scalarization)
    eval_ids = np.repeat(np.arange(k), cfg.eval_episodes)
    eval_starts = random_starts(tasks, eval_ids, np.random.default_rng(derive_seed(cfg.seed, "eval-starts")))

    def evaluate(policy) -> list[dict]:
        run = rollout(policy, tasks, eval_ids, eval_starts, horizon=cfg.horizon)
        return [
            {
                "success": float(run["success"][eval_ids == t].mean()),
                "return": float(run["return"][eval_ids == t].mean()),
            }
            for t in range(k)
        ]

    runs = [
        {
            "method": "expert",
            "n": None,
            "width": None,
            "params": 0,
            "tasks": evaluate(lambda s, t: expert_actions(tasks, t, s)),
        }
    ]

    def record(method, n, width, models, params, extra=None):
        policy = DiffusionPolicy(models, sampler, seed=cfg.seed + 9)
        runs.append(
            {"method": method, "n": n, "width": width, "params": params, "tasks": evaluate(policy), **(extra or {})}
        )

    pareto = None
    for n in cfg.demos:
        rng = np.random.default_rng(derive_seed(cfg.seed, f"demos-{n}"))
        demos = demonstrations(tasks, n, rng, cfg.horizon)
        sizes = [len(p) for p in demos]
        specs = fit_specialists(
            demos,
            kind=cfg.specialist,
            model=spec_model,
            config=spec_cfg,
            sampler=sampler,
            seed=cfg.seed,
            progress=progress,
            cache=cache,
        )
        record(
            "specialist", n, cfg.specialist_width, specs, specs[0].params(), {"pairs": sizes, "class": cfg.specialist}
        )
        base, _ = fit_generalist(
            demos, model=gen_model, config=gen_cfg, scalarization=scal, seed=cfg.seed, progress=progress, cache=cache
        )
        record("baseline", n, cfg.width, base, count_params(base), {"pairs": sizes})
        conds = [random_states(tasks, t, cfg.unlabeled, rng) for t in range(k)]
        dist = distill_generalist(
            specs,
            conds,
            pairs=demos if cfg.mix_real else None,
            model=gen_model,
            config=gen_cfg,
            scalarization=scal,
            ideal=cfg.ideal,
            pseudo=pseudo_label(specs, conds, per_cond=cfg.pseudo_per_cond, seed=cfg.seed + 3),
            seed=cfg.seed,
            progress=progress,
        )
        gen, data = dist.generalist, list(dist.data)  # relabelling grows ``data``, not the distilled set
        record(
            "distilled",
            n,
            cfg.width,
            gen,
            count_params(gen),
            {"pairs": sizes, "ideal_point": dist.ideal, **budget(cfg.pseudo_per_cond, cfg.mix_real, dist)},
        )
        if cfg.relabel_rounds:
            spec_policy = DiffusionPolicy(specs, sampler, seed=cfg.seed + 21)
            ids = np.repeat(np.arange(k), cfg.relabel_episodes)
            for r in range(cfg.relabel_rounds):
                starts = random_starts(tasks, ids, rng)
                visited = rollout(
                    DiffusionPolicy(gen, sampler, seed=cfg.seed + 31 + r), tasks, ids, starts, horizon=cfg.horizon
                )
                for t in range(k):
                    s = visited["states"][visited["task_ids"] == t]
                    a = spec_policy(s, np.full(len(s), t))
                    data[t] = data[t] + Pairs(torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(a))
                train_dsm(
                    gen,
                    data,
                    config=DSMConfig(steps=cfg.relabel_steps, batch=cfg.batch, lr=cfg.relabel_lr, seed=cfg.seed + r),
                    scalarization=scal,
                    progress=progress,
                )
            record("distilled+relabel", n, cfg.width, gen, count_params(gen), {"pairs": sizes})
        if cfg.pareto and k == 2 and n == max(cfg.demos):
            pareto = {"n": n, "unlabeled": cfg.unlabeled, "width": cfg.width} | generalist_fronts(
                demos,
                dist,
                scal,
                pareto_weights(2, cfg.pareto),
                lambda net: evaluate(DiffusionPolicy(net, sampler, seed=cfg.seed + 9)),
                model=gen_model,
                config=gen_cfg,
                seed=cfg.seed,
                progress=progress,
            )
    config = asdict(cfg)
    config["tasks"] = [asdict(t) for t in tasks]
    names = [t.name for t in tasks]
    return {"experiment": "policy", "config": config, "task_names": names, "runs": runs, "pareto": pareto}
