"""charrnn: character-level RNN, LSTM and GRU language models, trained in NumPy.

The Python API (charrnn/api.py): `charrnn.train(corpus, **settings) -> TrainResult`,
`charrnn.load(path) -> Model`, then `Model.sample`, `Model.evaluate`, `Model.char_scores`.
`charrnn.train` is that function; the training loop's module is imported by its full name
(`from charrnn.train import train_corpus`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("charrnn")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from charrnn.api import Model, load, train  # noqa: E402
from charrnn.errors import CharRNNError  # noqa: E402
from charrnn.evaluate import EvalResult  # noqa: E402
from charrnn.train import TrainResult  # noqa: E402

__all__ = [
    "CharRNNError",
    "EvalResult",
    "Model",
    "TrainResult",
    "__version__",
    "load",
    "train",
]
