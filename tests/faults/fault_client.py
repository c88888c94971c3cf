"""Test-only NVFlare client: fedseg's own client with one fault injected at one site.

FEDSEG_TEST_FAULT="<site>:<kind>:<round>[,<site>:<kind>:<round>...]" picks, per faulty site, the fault
and the first round it hits:
  raise      the site's training raises (a crashing hospital machine);
  nan        the site's loss turns NaN, so the engine's own non-finite check fires;
  extra_key  the site's update carries a variable the global model does not have;
  half       the site's update carries its convolution weights in fp16.
"""

import os

import torch

from fedseg import backends
from fedseg.flare import client

FAULTS = {site: (kind, int(first)) for site, kind, first in
          ((part.split(":") + ["0"])[:3] for part in os.environ.get("FEDSEG_TEST_FAULT", "").split(",") if part)}


class FaultyTrainer:
    def __init__(self, inner, name):
        self.inner, self.name, self.calls = inner, name, 0

    def train(self, weights, epochs, progress=None, hooks=None, slot="global"):
        self.calls += 1
        kind, first = FAULTS.get(self.name, ("none", 0))
        if kind != "none" and self.calls > first:
            if kind == "raise":
                raise RuntimeError("injected fault: the site's machine failed mid-training")
            if kind == "nan":
                engine = self.inner.engine
                real_loss = engine.loss_fn
                engine.loss_fn = lambda out, y: real_loss(out, y) * torch.tensor(float("nan"))
                try:
                    return self.inner.train(weights, epochs, progress, hooks, slot)
                finally:
                    engine.loss_fn = real_loss
            if kind in ("extra_key", "half"):
                result = self.inner.train(weights, epochs, progress, hooks, slot)
                if kind == "extra_key":
                    result.weights["injected.weight"] = torch.zeros(3)
                else:
                    result.weights = {k: v.half() if v.ndim == 5 else v for k, v in result.weights.items()}
                return result
        return self.inner.train(weights, epochs, progress, hooks, slot)

    def evaluate(self, weights, split):
        return self.inner.evaluate(weights, split)

    def close(self):
        self.inner.close()


_real = backends.make_site_trainer


def faulty(data, runtime, seed=0):
    return FaultyTrainer(_real(data, runtime, seed), data.site.site)


client.make_site_trainer = faulty

if __name__ == "__main__":
    client.main()
