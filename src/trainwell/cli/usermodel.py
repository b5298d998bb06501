"""``--model FILE.py:CLASS``: a model class from the user's own Python file, for ``trainwell train`` and ``doctor``.

    trainwell doctor --model mynet.py:Net data.name=mnist
    trainwell train --model mynet.py:Net --model-args '{"hidden": 256}' data.name=mnist

Only that file is imported, by its path (importlib's ``spec_from_file_location``, under a private
module name): never a module looked up on ``sys.path``, and its folder is not put on ``sys.path``
(a sibling module it imports must be installed or importable already). The class is built with no
arguments, or with ``--model-args`` as keyword arguments, and wrapped like any model trainwell trains:
``Classifier(net, preprocessing)`` (:func:`trainwell.train.build.build_classifier`), so it receives
the preprocessed ``(N, *input_shape)`` floats and returns ``(N, num_classes)`` scores. The config's
``model.*`` and ``init.*`` keys do not apply to it: the class sets its layers and its initialisation.

Every mistake is one line (a :class:`~trainwell.errors.ConfigError`: exit 2, no traceback): a missing
or non-.py file, an import that fails (the exception's first line and where in the file), a class the
file does not define (its nn.Module classes are listed), a name that is no nn.Module class, ``--model-args``
that are not a JSON object, a class that cannot be built with them, and a model whose forward fails on
the configured data or returns the wrong shape.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trainwell.errors import ConfigError, exception_line, short_repr

if TYPE_CHECKING:  # annotations only: the command imports torch and the layers below when it runs
    from torch import nn

    from trainwell.config import Config
    from trainwell.data.splits import Splits

MODEL_HELP = ("train your own nn.Module: a class in your Python file, as FILE.py:CLASS (e.g. mynet.py:Net), built "
              "with no arguments or with --model-args. Only that file is imported, by its path (not a module from "
              "sys.path, and its folder is not added to sys.path). model.* and init.* keys do not apply to it")
MODEL_ARGS_HELP = "with --model: the class's keyword arguments as a JSON object, e.g. '{\"hidden\": 128}'"


def add_model_arguments(p: argparse.ArgumentParser, help_text: str = MODEL_HELP) -> None:
    """``--model FILE.py:CLASS`` and ``--model-args JSON`` on a command's parser."""
    p.add_argument("--model", metavar="FILE.py:CLASS", help=help_text)
    p.add_argument("--model-args", metavar="JSON", help=MODEL_ARGS_HELP)


def check_model_arguments(args: argparse.Namespace) -> None:
    """``--model-args`` only comes with ``--model``."""
    if args.model_args is not None and args.model is None:
        raise ConfigError("--model-args gives the keyword arguments of a --model class; add --model FILE.py:CLASS "
                          "or drop --model-args.")


def _split(spec: str) -> tuple[Path, str]:
    path, sep, name = spec.rpartition(":")  # the last colon: a Windows path has one of its own
    if not sep or not path or not name.isidentifier():
        raise ConfigError(f"--model takes FILE.py:CLASS, the file and the class it defines, e.g. mynet.py:Net; "
                          f"got {spec!r}.")
    return Path(path), name


def _module_classes(module: ModuleType) -> list[str]:
    from torch import nn

    return [name for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__]


def _import_file(path: Path) -> ModuleType:
    """Execute the user's file as a fresh module of its own (its ``if __name__ == "__main__":`` block does not run)."""
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else f"does not exist (from {Path.cwd()})"
        raise ConfigError(f"--model: '{path}' {where}; give the Python file that defines the class, e.g. mynet.py:Net.")
    if path.suffix != ".py":
        raise ConfigError(f"--model: '{path}' is not a .py file; give the Python file that defines the class, "
                          "e.g. mynet.py:Net.")
    name = "_trainwell_user_model_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:  # pragma: no cover (a .py path always has a source loader)
        raise ConfigError(f"--model: cannot import '{path}' as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # while it runs: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise ConfigError(f"--model: importing '{path}' failed{_where(exc, path)}: {type(exc).__name__}: "
                          f"{exception_line(exc, 160)}; fix the file or install what it imports.") from None
    return module


def _where(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the innermost line of the user's file in the failure, when there is one (a
    SyntaxError's message says where it is itself)."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == str(path.resolve())]
    return f" (line {lines[-1]})" if lines and not isinstance(exc, SyntaxError) else ""


def load_model_class(spec: str) -> type[nn.Module]:
    """The class ``CLASS`` of ``FILE.py:CLASS``, checked to be an nn.Module subclass the file has."""
    from torch import nn

    path, name = _split(spec)
    module = _import_file(path)
    classes = _module_classes(module)
    listed = f"its nn.Module classes: {', '.join(classes)}" if classes else "it defines no nn.Module class"
    if not hasattr(module, name):
        raise ConfigError(f"--model: '{path}' has no class {name!r}; {listed}.")
    value = getattr(module, name)
    if not (inspect.isclass(value) and issubclass(value, nn.Module)):
        what = "a class that is not an nn.Module subclass" if inspect.isclass(value) else \
            f"a {type(value).__name__}, not a class"
        raise ConfigError(f"--model: {name!r} in '{path}' is {what}; {listed}.")
    return value


def _model_kwargs(model_args: str | None) -> dict[str, Any]:
    if model_args is None:
        return {}
    try:
        kwargs = json.loads(model_args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-args must be a JSON object of keyword arguments, e.g. '{{\"hidden\": 128}}'; "
                          f"got {short_repr(model_args)} ({exc.msg}).") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--model-args must be a JSON object of keyword arguments, e.g. '{{\"hidden\": 128}}'; "
                          f"got a JSON {type(kwargs).__name__}: {short_repr(model_args)}.")
    return kwargs


def build_user_model(spec: str, model_args: str | None = None) -> nn.Module:
    """``CLASS(**model_args)`` of ``FILE.py:CLASS``: one line on every mistake (see the module docstring)."""
    from torch import nn

    cls = load_model_class(spec)
    kwargs = _model_kwargs(model_args)
    call = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = cls(**kwargs)
    except Exception as exc:
        try:
            signature = f"{cls.__name__}{inspect.signature(cls)}"
        except (TypeError, ValueError):  # pragma: no cover (a signature torch or C code hides)
            signature = cls.__name__
        raise ConfigError(f"--model: {call} failed: {type(exc).__name__}: {exception_line(exc, 160)}; the class "
                          f"takes {signature}: give its keyword arguments as --model-args '{{\"name\": value}}'.") \
            from None
    if not isinstance(model, nn.Module):  # pragma: no cover (a __new__ that returns something else)
        raise ConfigError(f"--model: {call} returned a {type(model).__name__}, not an nn.Module.")
    return model


def check_fits(model: nn.Module, spec: str, cfg: Config, splits: Splits) -> None:
    """Two training examples through the model, as training will pass them (after the preprocessing): a
    forward that fails or gives no ``(N, num_classes)`` scores is one line here, not a traceback later."""
    import torch

    from trainwell.data import to_float
    from trainwell.train.build import build_classifier

    classifier = build_classifier(cfg, splits, model)
    x = to_float(splits.train.take(torch.arange(min(2, len(splits.train)))))
    was_training = model.training
    classifier.eval()  # no batch-norm statistics change, no dropout draw
    try:
        with torch.no_grad():
            out = classifier(x)
    except Exception as exc:
        raise ConfigError(f"--model {spec}: its forward failed on {_data(cfg)}'s examples (a batch of shape "
                          f"{tuple(x.shape)}): {type(exc).__name__}: {exception_line(exc, 160)}; choose data the "
                          "model is written for (data.name=..., preset=...) or adapt its layers.") from None
    finally:
        classifier.train(was_training)
    wanted = (len(x), splits.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--model {spec}: it returned {got} for a batch of shape {tuple(x.shape)}, but {_data(cfg)} "
                          f"needs {wanted}: one score per class ({splits.num_classes} classes).")


def _data(cfg: Config) -> str:
    return f"data.name={cfg.data.name}" if isinstance(cfg.data.name, str) else "the data"


def user_model(spec: str | None, model_args: str | None, cfg: Config | None) -> dict[str, Any]:
    """The keyword arguments ``--model`` adds to ``trainwell.train`` and ``diagnose_config``: ``model``, the
    user's module checked on ``cfg``'s data (:func:`check_fits`), and ``splits``, that data, loaded once for
    the command; none without ``--model``. No ``cfg`` (``train --resume``: the run's config decides the
    data): the module alone."""
    from trainwell.data import load_splits

    if spec is None:
        return {}
    model = build_user_model(spec, model_args)
    if cfg is None:
        return {"model": model}
    splits = load_splits(cfg.data)
    check_fits(model, spec, cfg, splits)
    return {"model": model, "splits": splits}
