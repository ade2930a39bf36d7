"""What the launcher needs beyond plain pickle.

* :func:`dumps` pickles as cloudpickle does (``__main__`` and local functions
  by value), but code sent by value keeps its file name, so a failed job's
  traceback points at the user's file, not at ``<dynamic-code>``;
* Hydra's and this package's classes go by name even where Hydra's plugin
  scan has re-executed their modules (see :func:`_rebound`);
* a task function goes by reference where the workers can import it
  (:class:`TaskByReference`), unwrapping its decorators as they are.

cloudpickle is imported on first use.
"""

import copyreg
import functools
import importlib
import io
import pickle
import sys
import types
from dataclasses import dataclass
from typing import Any, Optional


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` as cloudpickle does, keeping the file names of code sent by value."""
    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def _pickler_class() -> Any:
    import cloudpickle

    code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)
    if code_reduce is None:  # a cloudpickle that works differently: keep its behaviour
        return cloudpickle.Pickler

    def keep_filename(code: types.CodeType) -> Any:
        constructor, args = code_reduce(code)
        args = tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)
        return constructor, args

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        # A plain dict: the C pickler looks every object's type up in it, and a
        # ChainMap would make each look-up a Python call.
        dispatch_table = {
            **copyreg.dispatch_table,
            **dict(cloudpickle.Pickler.dispatch_table),
            types.CodeType: keep_filename,
        }

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and _rebound(obj) is not None:
                return class_by_name, (obj.__module__, obj.__qualname__)
            return super().reducer_override(obj)

    return Pickler


# Modules whose classes a stored result may name: whoever reads it back (the
# launcher resuming a sweep) has Hydra and this package.
_BY_NAME = ("hydra.", f"{__package__}.")


def _rebound(cls: type) -> Optional[type]:
    """The class that ``cls``'s module now binds to its name, when that is another class.

    Hydra's plugin scan executes plugin modules again (this package's config,
    its own core plugins), so their names point to new classes while the
    configs Hydra composed keep the first ones as structured-config types.
    cloudpickle would send such a class by value, in every job's result; when
    it comes from Hydra or this package, it goes by name. (Other plugins'
    classes still go by value: a result must load where they are not installed.)
    """
    module = sys.modules.get(cls.__module__) if cls.__module__.startswith(_BY_NAME) else None
    if module is None:
        return None
    try:
        current: Any = functools.reduce(getattr, cls.__qualname__.split("."), module)
    except AttributeError:
        return None
    if (
        current is cls
        or not isinstance(current, type)
        or (current.__module__, current.__qualname__) != (cls.__module__, cls.__qualname__)
    ):
        return None
    return current


def class_by_name(module: str, qualname: str) -> type:
    """The class ``qualname`` of ``module``: how :func:`dumps` sends a rebound class."""
    cls = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
    if not isinstance(cls, type):
        raise TypeError(f"{module}.{qualname} is not a class")
    return cls


# -- tasks by reference ------------------------------------------------------------------

# How deep decorators may nest around a task (functools.wraps chains).
MAX_UNWRAP = 32


@dataclass(frozen=True)
class TaskByReference:
    """A task function named by where a worker finds it, instead of pickled with its module's objects.

    ``module`` and ``qualname`` name the module-level object (the task, or a
    decorator's wrapper around it); ``unwrap`` is how many ``__wrapped__`` links
    lead from that object to the task. A worker imports the module (for
    ``__main__``, the app's script, imported as multiprocessing's spawn does)
    and follows the links: nothing else of the module is pickled, so objects
    there that refuse pickling (a lock, a client, a module facade) never matter.
    """

    module: str
    qualname: str
    unwrap: int

    def resolve(self) -> Any:
        module = sys.modules.get(self.module) or importlib.import_module(self.module)
        task: Any = functools.reduce(getattr, self.qualname.split("."), module)
        for _ in range(self.unwrap):
            task = task.__wrapped__
        return task


def task_reference(task: Any) -> Optional[TaskByReference]:
    """How a worker that imports ``task``'s module finds it again; None when it cannot.

    None for a task defined inside a function or a notebook cell, and for a
    callable object (an instance has no qualified name): those go by value.
    """
    module_name = getattr(task, "__module__", None)
    qualname = getattr(task, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    module = sys.modules.get(module_name)
    try:
        found: Any = functools.reduce(getattr, qualname.split("."), module)
    except AttributeError:
        return None
    for depth in range(MAX_UNWRAP + 1):
        if found is task:
            return TaskByReference(module_name, qualname, depth)
        found = getattr(found, "__wrapped__", None)
        if found is None:
            return None
    return None
