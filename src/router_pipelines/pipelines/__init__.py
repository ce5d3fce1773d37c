"""One sub-package per Kedro pipeline; each model family is a namespace (docs/architecture.md)."""

import warnings

# Kedro warns about dotted dataset names read outside their namespace. Here they are the
# interface between families (switchable reads pretrain.model) and meant that way.
warnings.filterwarnings("ignore", "One or more dataset names contain '.'", UserWarning)
