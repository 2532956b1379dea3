"""The step kinds the runner knows, each with the function that runs one step.

The runner looks steps up here; the step modules know only the step context
(``devicehub.runner.context``), never the runner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from devicehub.runner import electroporation, exposure, injection

#: step kind -> ``run(ctx, step)``
STEPS: dict[str, Callable[[Any, Any], Awaitable[None]]] = {
    "injection": injection.run,
    "electroporation": electroporation.run,
    "led": exposure.run,
    "pemf": exposure.run,
}
