"""The losses a run can train with, by name, like :data:`~keras_supcon.models.BACKBONES`.

Each :class:`LossSpec` says how a run uses the loss: its kind (``pretrain``: the
encoder and a head are trained on views, then a probe is fitted on the frozen
encoder; ``end_to_end``: one cross-entropy stage of the whole classifier), its
head, the settings it reads, its default temperature, and how to build the Keras
loss from a run's settings. The training job, the CLI's ``--loss`` choices, the
ablation and the reports read it: adding a pre-training loss is one entry here
plus its module.
"""

from dataclasses import dataclass

from keras_supcon.errors import ConfigError
from keras_supcon.losses.barlow import BarlowTwinsLoss
from keras_supcon.losses.npairs import NPairsLoss
from keras_supcon.losses.supcon import SimCLRLoss, SupConLoss
from keras_supcon.losses.triplet import TripletLoss

PRETRAIN, END_TO_END = "pretrain", "end_to_end"

# Settings of every run of a kind (besides the loss's own).
VIEW_SETTINGS = ("views", "projection_dim", "head_hidden")  # losses trained on views
PROBE_SETTINGS = ("linear_epochs", "linear_lr", "probe", "probe_hidden", "probe_fit",
                  "probe_epochs", "probe_refit")  # pre-training losses (a probe follows)


@dataclass(frozen=True)
class LossSpec:
    name: str
    kind: str  # PRETRAIN or END_TO_END
    settings: tuple = ()  # the run settings this loss reads (besides its kind's)
    temperature: float = None  # default temperature, for losses that have one
    head: str = None  # "projection" (MLP), "barlow" (BatchNorm projector), None (no head)
    build: object = None  # run settings -> the Keras loss (pre-training losses)
    description: str = ""

    @property
    def views(self):
        """Whether runs train on augmented views of each image (and need a head)."""
        return self.head is not None


LOSSES = {
    spec.name: spec
    for spec in [
        LossSpec("supcon", PRETRAIN, ("temperature", "variant"), 0.1, "projection",
                 lambda c: SupConLoss(temperature=c.temperature, variant=c.variant),
                 "supervised contrastive (Khosla et al. 2020)"),
        LossSpec("simclr", PRETRAIN, ("temperature",), 0.1, "projection",
                 lambda c: SimCLRLoss(temperature=c.temperature),
                 "NT-Xent, self-supervised (Chen et al. 2020)"),
        LossSpec("npairs", PRETRAIN, ("temperature",), 0.05, "projection",
                 lambda c: NPairsLoss(temperature=c.temperature),
                 "npairs, as the Keras / SHARCNet tutorial"),
        LossSpec("triplet", PRETRAIN, ("margin", "mining", "squared_distance"), None,
                 "projection",
                 lambda c: TripletLoss(margin=c.margin, mining=c.mining,
                                       squared=c.squared_distance, seed=c.seed),
                 "triplet margin loss with in-batch mining"),
        LossSpec("barlow", PRETRAIN, ("barlow_lambda",), None, "barlow",
                 lambda c: BarlowTwinsLoss(lambda_=c.barlow_lambda),
                 "Barlow Twins, self-supervised (Zbontar et al. 2021)"),
        LossSpec("ce", END_TO_END, description="cross-entropy, end to end"),
        LossSpec("center", END_TO_END, ("center_weight", "center_alpha"),
                 description="cross-entropy + center loss (Wen et al. 2016)"),
        LossSpec("supcon+ce", END_TO_END, ("temperature", "variant", "supcon_weight"), 0.1,
                 "projection", description="cross-entropy + w x SupCon in one stage"),
    ]
}


def get_loss_spec(name):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None


def loss_names(kind=None, *, views=None):
    """Names of the losses of ``kind`` (any if None) / that train on views (if given)."""
    return tuple(n for n, s in LOSSES.items()
                 if (kind is None or s.kind == kind) and (views is None or s.views == views))


def settings_of(name):
    """Every setting that changes a run with loss ``name`` beyond the shared ones."""
    spec = get_loss_spec(name)
    return (spec.settings + (VIEW_SETTINGS if spec.views else ())
            + (PROBE_SETTINGS if spec.kind == PRETRAIN else ()))


def loss_specific_settings():
    """``{setting: losses that use it}`` for the settings some losses do not read."""
    table = {}
    for name in LOSSES:
        for key in settings_of(name):
            table.setdefault(key, ())
            table[key] += (name,)
    return table


def uses_setting(loss, key):
    """Whether setting ``key`` changes a run with loss ``loss`` (``temperature``: not
    for ce); settings no loss-specific entry names apply to every run."""
    users = loss_specific_settings().get(key)
    return users is None or loss in users


def build_pretraining_loss(config):
    """The Keras loss of a pre-training run, from its settings (``config.loss``)."""
    spec = get_loss_spec(config.loss)
    if spec.kind != PRETRAIN:
        raise ConfigError(f"{config.loss} is not a pre-training loss")
    return spec.build(config)
