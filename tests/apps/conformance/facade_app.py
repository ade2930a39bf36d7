"""An app like upstream's multiprocessing test app, written for this suite.

Its module holds an object that refuses to be pickled, its ``@hydra.main``
function is wrapped by an outer decorator (with functools.wraps), a resolver
is registered under the ``__main__`` guard, and ``+return_lambda=true`` makes
the task return a lambda. Each job writes ``result.txt``: its pid and the
resolved ``runtime_value``.
"""

import functools
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra_compat import MAIN_KWARGS, register_resolver
from omegaconf import DictConfig


class RefusesPickling(ModuleType):
    def __reduce__(self) -> NoReturn:
        raise TypeError("this module facade cannot be pickled")


facade = RefusesPickling("facade")


def logged(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # only the app's own call goes through here, never a job
            raise AssertionError("the outer decorator ran inside a job")
        return func(*args, **kwargs)

    return wrapper


@logged
@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def app(cfg: DictConfig) -> Any:
    assert facade.__name__ == "facade"
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "result.txt").write_text(f"{os.getpid()} {cfg.runtime_value}")
    if cfg.get("return_lambda", False):
        return lambda value: value * 2
    return None


if __name__ == "__main__":
    register_resolver("runtime_test", lambda value: f"resolved-{value}")
    app()
