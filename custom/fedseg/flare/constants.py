"""Names shared by fedseg's NVFlare server and site code: one place, so neither imports the other for them."""

# The metric every round's best-model selection reads (sites send it, the recipes select on it).
KEY_METRIC = "val_dice"
# FedAvg weighs each update by this meta entry (see NVFlare's FedAvg controller).
NUM_STEPS = "NUM_STEPS_CURRENT_ROUND"
# Meta key of an update a site withholds (empty params), with its reason; the reason names no file.
WITHHELD = "fedseg_withheld"
# Meta key a site sets on its last result when it takes no further part (its reason is under WITHHELD).
LEAVING = "fedseg_leaving"
# Seconds between a site's heartbeats (fedseg.flare.liveness).
HEARTBEAT_INTERVAL_S = 5.0
# SCAFFOLD's control variates in a task's meta: NVFlare's AlgorithmConstants.SCAFFOLD_CTRL_GLOBAL
# (server to sites) and SCAFFOLD_CTRL_DIFF (sites to server); a test checks they are NVFlare's.
CTRL_GLOBAL = "scaffold_c_global"
CTRL_DIFF = "scaffold_c_diff"
