"""``@hydra.main`` arguments that are warning-free on every supported Hydra.

Hydra 1.3 warns when ``version_base`` is missing; Hydra 1.4 warns when it is
given (it is deprecated there). The apps run under ``-Werror``.
"""

from typing import Any

import hydra
import omegaconf
from omegaconf import OmegaConf

HYDRA_1_4 = tuple(int(part) for part in hydra.__version__.split(".")[:2]) >= (1, 4)
MAIN_KWARGS = {} if HYDRA_1_4 else {"version_base": "1.3"}


def register_resolver(name: str, resolver: Any) -> None:
    """OmegaConf's resolver registration, warning-free on 2.3 (Hydra 1.3) and 2.4 (Hydra 1.4).

    OmegaConf 2.4 deprecates ``register_new_resolver`` for ``register_resolver``,
    the name 2.3 keeps for its deprecated legacy API.
    """
    if tuple(int(part) for part in omegaconf.__version__.split(".")[:2]) >= (2, 4):
        OmegaConf.register_resolver(name, resolver, replace=True)
    else:
        OmegaConf.register_new_resolver(name, resolver, replace=True)
