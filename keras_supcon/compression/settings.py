"""The settings of a pruning job: :class:`PruneConfig` (``python -m keras_supcon.prune``),
typed fields from which its command line is derived (:mod:`keras_supcon.runs.settings`)."""

from dataclasses import dataclass
from pathlib import Path

from keras_supcon.compression.prune import SCHEDULES, check_sparsity, parse_m_by_n
from keras_supcon.compression.sensitivity import DEFAULT_RATES
from keras_supcon.errors import ConfigError, check_choice
from keras_supcon.runs.settings import VERBOSITY, check_verbosity, setting


def parse_floats(text):
    """``"0,0.2,0.5"`` -> ``(0.0, 0.2, 0.5)``."""
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers; got {text!r}") from None


def parse_names(text):
    """``"conv_1, dense"`` -> ``("conv_1", "dense")``."""
    return tuple(n.strip() for n in str(text).split(",") if n.strip())

METHODS = ("magnitude", "lottery", "sensitivity")
METHOD_SETTINGS = {  # the settings each method uses (shown in its report)
    "magnitude": ("schedule", "epochs", "lr", "m_by_n", "layers", "include_first_conv"),
    "lottery": ("epochs", "train_epochs", "scope", "rounds", "rewind_epoch", "layers",
                "include_first_conv"),
    "sensitivity": ("schedule", "epochs", "lr", "rates", "layers", "include_first_conv"),
}


@dataclass
class PruneConfig:
    """Every setting of a pruning job (written to each job's ``config.json``)."""

    run_dir: str | None = setting(None, "a finished run of keras_supcon.train")
    sparsity: tuple | None = setting(
        None, "target fraction of zero weights in [0, 1); several (0,0.2,0.5,0.8) run a sweep "
              "(default 0.5)", parse=parse_floats)
    method: str = setting("magnitude", "magnitude (tfmot), lottery (lottery ticket) or "
                                       "sensitivity (per-layer sparsities)", choices=METHODS)
    schedule: str = setting("constant", "tfmot pruning schedule", choices=SCHEDULES)
    epochs: int = setting(2, "fine-tuning epochs (lottery: retraining epochs per round)")
    lr: float = setting(1e-4, "fine-tuning learning rate of tfmot pruning (Adam; with "
                              "--method lottery, of the uniform job it is compared with: the "
                              "ticket's own networks train with the run's optimizer and lr)")
    batch_size: int | None = setting(None, "default: the run's")
    m_by_n: str | None = setting(None, "structured sparsity, M zeros in every N weights (e.g. "
                                       "2:4)", metavar="M:N")
    layers: tuple | None = setting(None, "comma-separated layer names to prune (default: every "
                                         "Conv2D and Dense kernel but the first convolution)",
                                   parse=parse_names)
    include_first_conv: bool = setting(False, "also prune the first convolution")
    scope: str = setting("global", "magnitude threshold across all layers (global) or per "
                                   "layer", group="lottery ticket (--method lottery)",
                         choices=("global", "layer"))
    rounds: int = setting(1, "iterative pruning rounds",
                          group="lottery ticket (--method lottery)")
    rewind_epoch: int = setting(0, "0: rewind to initialisation; k: to the weights after "
                                   "epoch k", group="lottery ticket (--method lottery)")
    train_epochs: int | None = setting(None, "dense training epochs (default: the run's "
                                             "--epochs)",
                                       group="lottery ticket (--method lottery)")
    rates: tuple = setting(DEFAULT_RATES, "sparsities each layer is pruned at alone to measure "
                                          "sensitivity",
                           group="layer-sensitive pruning (--method sensitivity)",
                           parse=parse_floats)
    tflite: bool = setting(True, "TFLite quantisation of the pruned model (--no-tflite: skip)")
    out: str | None = setting(None, "default: RUN_DIR/pruning")
    overwrite: bool = setting(False, "redo jobs that already finished")
    verbose: str = setting("auto", "Keras progress output (auto: progress bars)",
                           choices=VERBOSITY)

    def validate(self):
        self.verbose = check_verbosity(self.verbose)
        if self.run_dir is None:
            raise ConfigError("give the RUN_DIR of a finished training run")
        given = self.sparsity is not None
        if not given:
            self.sparsity = (0.5,)
        if isinstance(self.sparsity, (int, float)):
            self.sparsity = (self.sparsity,)
        self.sparsity = tuple(check_sparsity(s) for s in self.sparsity)
        if not self.sparsity:
            raise ConfigError("give at least one sparsity")
        check_choice(self.method, METHODS, "method")
        check_choice(self.schedule, SCHEDULES, "schedule")
        m_by_n = parse_m_by_n(self.m_by_n)
        if m_by_n:
            if self.method != "magnitude":
                raise ConfigError("--m-by-n works with --method magnitude only")
            if given and self.sparsity != (m_by_n[0] / m_by_n[1],):
                raise ConfigError(f"--m-by-n {self.m_by_n} sets the sparsity to "
                                  f"{m_by_n[0] / m_by_n[1]:g}; leave out --sparsity")
            self.sparsity = (m_by_n[0] / m_by_n[1],)
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1; got {self.epochs}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"--scope must be global or layer; got {self.scope!r}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1; got {self.rounds}")
        if not self.rates or any(not 0 < r < 1 for r in self.rates):
            raise ConfigError(f"--rates must be in (0, 1); got {self.rates}")
        if self.method == "sensitivity" and max(self.sparsity) > max(self.rates):
            raise ConfigError(f"sparsity {max(self.sparsity)} is above the largest "
                              f"sensitivity rate {max(self.rates)}; add a higher --rates value")
        if self.out is None:
            self.out = str(Path(self.run_dir) / "pruning")
        return self


def job_name(method, sparsity, m_by_n=None):
    tag = f"-{m_by_n.replace(':', 'of')}" if m_by_n else ""
    return f"{method}-s{sparsity:.2f}{tag}"
