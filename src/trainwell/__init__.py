"""trainwell: train neural networks on sound foundations, with evidence of why they train well."""

from trainwell.version import __version__

from trainwell.config import Config, resolve  # noqa: E402
from trainwell.errors import TrainwellError  # noqa: E402

# Importing the `trainwell.train` sub-package binds that name to the module; the API function of the
# same name is bound after it, so `trainwell.train(...)` is always the function.
from trainwell.api import Run, evaluate, export, load_run, predict, train  # noqa: E402
from trainwell.diagnose import diagnose_model  # noqa: E402  (the doctor on any nn.Module)

__all__ = ["Config", "resolve", "TrainwellError", "train", "evaluate", "predict", "export", "load_run", "Run",
           "diagnose_model",
           "__version__"]
