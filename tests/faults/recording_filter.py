"""Test-only client output filter: writes down everything a site sends to the server.

Installed as the last task-result filter of a test job; every outgoing Shareable (headers, DXO kind,
meta, data keys, strings, and the shape and dtype of every array) is appended as one JSON line to
``$FEDSEG_TEST_RECORD/<site>.jsonl``. Numbers are kept; array contents are summarised, since only
names and text can carry identifiers.
"""

import json
import os

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter


def _render(value):
    if isinstance(value, dict):
        return {str(k): _render(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"array": list(np.shape(value)), "dtype": str(value.dtype)}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class RecordOutgoing(Filter):
    def process(self, shareable, fl_ctx):
        site = fl_ctx.get_identity_name()
        record = {"headers": _render(dict(shareable.get_header_dict() if hasattr(shareable, "get_header_dict")
                                         else shareable.get("__headers__", {})))}
        try:
            dxo = from_shareable(shareable)
            record.update(kind=dxo.data_kind, meta=_render(dxo.meta), data=_render(dxo.data))
        except Exception as exc:  # an error result carries no DXO
            record.update(no_dxo=repr(exc), raw=_render({k: v for k, v in shareable.items() if k != "__headers__"}))
        with open(os.path.join(os.environ["FEDSEG_TEST_RECORD"], f"{site}.jsonl"), "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        return shareable
