"""FedAvg (McMahan et al. 2017): NVFlare's FedAvg controller under fedseg's round rules.

Every live site trains the received model for the job's local epochs and sends its weights;
the server averages them weighted by each site's training cases.
"""

from fedseg.algorithms.base import Algorithm


class FedAvg(Algorithm):
    name = "fedavg"
    summary = "NVFlare's FedAvg: the average of the sites' weights, weighted by their training cases"


ALGORITHM = FedAvg()
