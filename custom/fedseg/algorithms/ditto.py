"""Ditto (Li et al. 2021): a personalised model per site next to the global one.

The global model trains as in FedAvg (and is what the server averages and selects on). Each
round, every site also trains its own personalised model for ``epochs`` epochs with a proximal
term ``lambda/2 ||v - w_global||^2`` towards the model it received: NVFlare's
``PTFedProxLoss(ditto_lambda)``, which is ``PTDittoHelper.prox_criterion``. fedseg's site trainer
replaces the helper's model, optimizer and file handling so that the personalised phase also
runs on a Ray site; it keeps its own optimizer state. The site reports
``val_dice_personal`` (its personalised model on its validation cases) beside ``val_dice``, and
cross-site evaluation scores the personalised models (each site's "local" model) on every site.
"""

from __future__ import annotations

from fedseg.algorithms.base import Algorithm, Option, RoundOutput, SiteAlgorithm
from fedseg.algorithms.fedprox import ProximalHooks

PERSONAL = "personal"


class DittoSite(SiteAlgorithm):
    """Holds the site's personalised model (in memory and in the site's workspace)."""

    personal: dict | None = None

    def train_round(self, trainer, params, meta, *, epochs, progress) -> RoundOutput:
        result = trainer.train(params, epochs, progress=progress)
        start = self.personal if self.personal is not None else params
        own = trainer.train(start, int(self.options["epochs"]), progress=progress,
                            hooks=ProximalHooks(params, self.options["lambda"]), slot=PERSONAL)
        self.personal = own.weights
        scores = trainer.evaluate(self.personal, "validation")
        metrics = {f"{k}_personal": v for k, v in scores.as_metrics("val").items()}
        metrics["train_loss_personal"] = own.final_loss
        return RoundOutput(result, metrics=metrics)

    def model_to_submit(self, last_weights):
        return self.personal if self.personal is not None else last_weights

    def models_to_keep(self) -> dict:
        return {PERSONAL: self.personal} if self.personal is not None else {}


class Ditto(Algorithm):
    name = "ditto"
    summary = "FedAvg plus a personalised model per site, kept near the global one by a proximal term"
    options = (Option("lambda", 0.1, 0.0, 100.0, "weight of the personalised model's proximal term"),
               Option("epochs", 1, 1, 100, "epochs the personalised model trains each round", integer=True))
    resume_note = "each site's personalised model starts again from the global model"
    site_class = DittoSite

    def site_options(self, job):
        return self.values(dict(job.algorithm_options))


ALGORITHM = Ditto()
