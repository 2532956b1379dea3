"""Running the program: its steps in order, a step named by another's ``with`` alongside it.

A group resumes from its progress (a paused session goes on where it stopped); each
step kind's function comes from ``devicehub.runner.steps`` and sees only the step
context. ``step_started`` and ``step_done`` (with the step's totals) are recorded here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from devicehub.runner.progress import StepProgress
from devicehub.runner.steps import STEPS


def groups(runner: Any) -> list[list[Any]]:
    """Steps in order; a step named by another's ``with`` runs alongside it, not alone."""
    partners = {getattr(s, "with_", None) for s in runner.program.steps} - {None}
    out: list[list[Any]] = []
    for s in runner.program.steps:
        if s.id in partners:
            continue
        group = [s]
        w = getattr(s, "with_", None)
        if w:
            group.append(runner.program_step(w))
        out.append(group)
    return out

async def run_group(runner: Any, group: list[Any]) -> None:
    """One group of steps (a step, or steps side by side), from where its progress stands."""
    runners = {**STEPS, "confirm": lambda runner, step: runner.run_confirm(step)}
    for step in group:
        sp = runner.progress.setdefault(step.id, StepProgress(step.id, step.kind))
        if sp.status != "done":
            sp.status = "active"
    todo = [s for s in group if runner.progress[s.id].status != "done"]
    if not todo:
        return
    runner.current_step = group[0].id
    for s in todo:
        if not runner.progress[s.id].points and not runner.progress[s.id].done_amounts:
            await runner.event("step_started", step=s.id, kind=s.kind, devices=step_device_list(runner, s))
    runner.publish_state()
    if len(todo) == 1:
        await runners[todo[0].kind](runner, todo[0])
    else:
        await run_alongside(runner, todo, runners)
    for s in todo:
        runner.progress[s.id].status = "done"
        await runner.event("step_done", step=s.id, kind=s.kind, devices=step_device_list(runner, s),
                         totals=step_totals(runner, s))
    runner.publish_state()

async def run_alongside(runner: Any, steps: list[Any], runners: dict[str, Any]) -> None:
    """Run steps side by side; the first to fail cancels the others."""
    runner.start_marks = {}
    n_exposures = sum(1 for s in steps if s.kind in ("led", "pemf"))
    runner.alongside_barrier = asyncio.Barrier(n_exposures) if n_exposures > 1 else None
    tasks = [asyncio.ensure_future(runners[s.kind](runner, s)) for s in steps]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        runner.alongside_barrier = None
    if len(runner.start_marks) >= 2:
        marks = sorted(runner.start_marks.values())
        await runner.event("alongside_started", steps=[s.id for s in steps],
                         skew_ms=round((marks[-1] - marks[0]) * 1000.0, 3))

def step_device_list(runner: Any, step: Any) -> list[str]:
    return [runner.step_devices[step.id]] if step.id in runner.step_devices else []

def step_totals(runner: Any, step: Any) -> dict[str, float]:
    sp = runner.progress[step.id]
    out: dict[str, float] = dict(sp.done_amounts)
    for p in sp.points.values():
        for k, v in p.delivered.items():
            if not k.endswith("_sum"):  # bookkeeping (e.g. depth sums for averages), not a delivery
                out[k] = out.get(k, 0.0) + v
    return {k: round(v, 6) for k, v in out.items()}
